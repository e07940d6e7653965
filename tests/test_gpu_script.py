"""``benchmarks/gpu.sh`` parses, documents itself and refuses unknown arguments (its full
``--dry-run`` takes minutes: run it by hand, see README Benchmarks)."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def test_gpu_script_is_valid_bash_with_help_and_a_clear_error():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    help_ = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "--dry-run" in help_.stdout and "$OUT" in help_.stdout
    bad = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
