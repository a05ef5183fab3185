"""The finetune web app (Streamlit): `listing` (the models), `uploads` (decoding, predicting), `results` (the table)."""
