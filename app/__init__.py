"""The finetune web app (Streamlit) and the computation behind it (`app.logic`)."""
