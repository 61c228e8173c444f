from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_api_never_imports_torch(tmp_path: Path) -> None:
    """The API image has no torch: importing and building the app must not pull it in, even indirectly."""
    code = (
        "import sys\n"
        "from api.main import create_app\n"
        "from api.db.migrate import upgrade_head\n"
        "import api.db.crud.jobs, api.db.crud.datasets, api.db.crud.checkpoints, api.queue\n"
        "import api.memory_estimate, api.quotas\n"
        "create_app().openapi()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'worker'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {"RUC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_client_errors_import_neither_torch_nor_fastapi() -> None:
    """The worker imports api.client_errors; it must stay a plain module both sides can load."""
    code = (
        "import sys\n"
        "import api.client_errors\n"
        "banned = {'torch', 'fastapi', 'starlette', 'sqlalchemy'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
