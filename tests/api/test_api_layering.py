from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_api_never_imports_torch(tmp_path: Path) -> None:
    """The API image has no torch: importing and building the app must not pull it in, even indirectly."""
    code = (
        "import sys\n"
        "from api.main import create_app\n"
        "from service.db.migrate import upgrade_head\n"
        "import service.db.crud.jobs, service.db.crud.datasets, service.db.crud.checkpoints, api.queue\n"
        "import api.memory_estimate, api.quotas, api.services.predictions, core.predict.inputs\n"
        "create_app().openapi()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision', 'worker'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    env = {"RUC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_shared_package_imports_neither_torch_nor_the_web_stack() -> None:
    """Both images load ``service`` (settings, database, storage layout, error codes, task names)."""
    code = (
        "import sys\n"
        "import service.client_errors, service.settings, service.storage, service.task_names\n"
        "import service.db.migrate, service.db.session, service.db.clock\n"
        "import service.db.crud.job_runs, service.db.crud.requeue, service.db.crud.jobs\n"
        "import service.db.crud.predictions\n"
        "banned = {'torch', 'fastapi', 'starlette', 'api', 'worker'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_worker_never_imports_the_http_layer() -> None:
    """The worker reaches the database and settings through ``service``; ``api/`` is HTTP only."""
    code = (
        "import sys\n"
        "import worker.celery_app, worker.job_runner, worker.recovery, worker.validation, worker.gc\n"
        "import worker.predictions, worker.tasks.predictions\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'api', 'fastapi', 'starlette'})\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
