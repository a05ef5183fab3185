"""`finetune app` serves the app: started as a user would, answered over HTTP, stopped."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

from tests.app.conftest import free_port


def test_finetune_app_serves_the_app(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "finetune.cli", "app", "--port", str(port), "--models-dir", str(tmp_path)]
    server = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
            time.sleep(0.3)
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl+C
        server.wait(timeout=20)
    assert f"127.0.0.1:{port}" in server.stdout.read().decode()
