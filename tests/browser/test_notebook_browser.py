"""Notebook 05 in a real browser: JupyterLab + headless Chromium render its figures and widgets.

What this checks that the papermill and widget unit tests cannot: the plotly mimetype
renderer, the ipywidgets manager and anywidget's ``FigureWidget`` front end all work in
JupyterLab offline, and the inspector's step slider, moved with the keyboard in the page,
reaches the kernel and changes a drawn figure.

* JupyterLab runs on 127.0.0.1 (random free port, a token, root allowed) over a temporary
  root folder holding a copy of the notebook with its smoke parameters injected (papermill
  ``prepare_only``), and temporary config / settings / workspace folders (news and update
  checks off, so no toast covers the page).
* Debian's Chromium (``/usr/bin/chromium``; ``bash tools/install_browser.sh``) is driven by
  the Playwright Python package with a fresh profile; ``playwright install`` is never used.
* The screenshot goes to ``<runs>/browser/05_latent_trajectories.png`` (``runs`` is
  ``workbench.paths.runs_dir()``; under pytest that is the session's temporary folder, so set
  ``WORKBENCH_KEEP_SCREENSHOTS=<folder>`` to keep a copy).

Run it alone with ``pytest -m browser tests/browser`` (about 2-4 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "notebooks" / "05_latent_trajectories.ipynb"
SCREENSHOT_NAME = "05_latent_trajectories.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SERVER_TIMEOUT = 180
RUN_TIMEOUT = 900  # the whole notebook (kernel start, imports, tiny models, widgets)


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_params() -> dict:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_wb_notebook_params", REPO_ROOT / "tests" / "notebook_params.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SMOKE_PARAMS.get(NOTEBOOK.name, {}))


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server over a temporary root holding the prepared notebook."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (install it with: bash tools/install_browser.sh)")
    pytest.importorskip(
        "playwright.sync_api", reason="the playwright Python package is not installed"
    )
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")
    import papermill

    root = tmp_path / "lab"
    root.mkdir()
    out_dir = tmp_path / "out"
    params = {**_smoke_params(), "out_dir": str(out_dir)}
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(root / NOTEBOOK.name),
        parameters=params,
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
    )

    settings = tmp_path / "settings"
    notif = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))  # no "Select Kernel" dialog
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        JUPYTER_PREFER_ENV_PATH="1",
        JUPYTER_PLATFORM_DIRS="1",
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.open_browser=False",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={token}",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={root}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--KernelSpecManager.ensure_native_kernel=True",
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"jupyter lab exited ({proc.returncode}):\n"
                    + (tmp_path / "jupyterlab.log").read_text()
                )
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"jupyter lab did not answer within {SERVER_TIMEOUT}s:\n"
                    f"{(tmp_path / 'jupyterlab.log').read_text()[-3000:]}"
                )
            time.sleep(1.0)
        yield {
            "base": base,
            "token": token,
            "root": root,
            "out_dir": out_dir,
            "chromium": chromium,
            "log": tmp_path / "jupyterlab.log",
            "tmp": tmp_path,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


# Text of every code cell's prompt ("[3]:", "[*]:", "[ ]:") and any traceback in the outputs.
_CELL_STATE_JS = """() => {
  const prompts = Array.from(
      document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt'))
      .map(p => p.textContent.trim());
  const errors = Array.from(document.querySelectorAll('.jp-Notebook .jp-OutputArea-output'))
      .map(o => o.textContent).filter(t => t.includes('Traceback'))
      .map(t => t.slice(-1500));
  return {prompts, errors};
}"""

# Everything drawn in the inspector's plotly divs (trace data and shapes).
_INSPECTOR_PLOTS_JS = """() => {
  const box = document.querySelector('.workbench-latent-inspector');
  if (!box) return null;
  return Array.from(box.querySelectorAll('.js-plotly-plot')).map(d => JSON.stringify({
      data: (d.data || []).map(t => [t.type, t.x, t.y, t.z, t.text]),
      shapes: ((d.layout || {}).shapes || []).map(s => [s.x0, s.x1, s.y0, s.y1]),
      title: (((d.layout || {}).title) || {}).text}));
}"""


def _screenshot_path() -> Path:
    from workbench.paths import runs_dir

    return runs_dir() / "browser" / SCREENSHOT_NAME


def _keep(path: Path) -> None:
    """Copy a screenshot to ``$WORKBENCH_KEEP_SCREENSHOTS`` (pytest's runs folder is temporary)."""
    keep = os.environ.get("WORKBENCH_KEEP_SCREENSHOTS")
    if keep and path.is_file():
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(keep) / path.name)


def _wait_for_kernel(page, timeout: float) -> None:
    """Wait for "<kernel> | Idle" in the status bar; accept a "Select Kernel" dialog if shown."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-Dialog-button.jp-mod-accept")
        if dialog.count():
            dialog.first.click()
        text = " ".join(page.locator(".jp-StatusBar-TextItem").all_inner_texts())
        if "| Idle" in text and "No Kernel" not in text:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the kernel did not start within {timeout}s (status bar: {text!r})")


def _wait_for_run(page, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    state = {}
    while time.monotonic() < deadline:
        state = page.evaluate(_CELL_STATE_JS)
        if state["errors"]:
            return state
        prompts = state["prompts"]
        if prompts and all(p.startswith("[") and p[1:-2].strip().isdigit() for p in prompts):
            return state
        time.sleep(2.0)
    raise TimeoutError(f"cells did not finish within {timeout}s: {state}")


def test_notebook_renders_figures_and_inspector(lab):
    from playwright.sync_api import sync_playwright

    shot = _screenshot_path()
    shot.parent.mkdir(parents=True, exist_ok=True)
    url = f"{lab['base']}/lab/tree/{NOTEBOOK.name}?token={lab['token']}"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(lab["tmp"] / "chromium-profile"),
            executable_path=lab["chromium"],
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1200},
        )
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.set_default_timeout(60_000)
        try:
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=180_000)
            _wait_for_kernel(page, SERVER_TIMEOUT)
            for toast in page.locator(
                ".jp-Notification-Toast-Close, .Toastify__close-button"
            ).all():
                toast.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

            state = _wait_for_run(page, RUN_TIMEOUT)
            assert not state["errors"], "a notebook cell failed:\n" + "\n---\n".join(
                state["errors"]
            )

            # figures: the notebook's own (mimetype renderer) and the inspector's four
            inspector = page.locator(".workbench-latent-inspector")
            inspector.wait_for(state="visible", timeout=120_000)
            page.wait_for_function(
                "() => { const b = document.querySelector('.workbench-latent-inspector');"
                " return b && b.querySelectorAll('.js-plotly-plot').length >= 4; }",
                timeout=180_000,
            )
            n_plots = page.locator(".js-plotly-plot").count()
            assert n_plots >= 11, (
                f"expected >= 11 plotly figures (7 notebook + 4 inspector), found {n_plots}"
            )
            assert page.locator(".jupyter-widgets").count() > 0
            slider = inspector.locator(
                ".widget-slider", has=page.locator(".widget-label", has_text="step")
            )
            assert slider.count() == 1, "the inspector's step slider did not render"
            readout = slider.locator(".widget-readout")
            assert readout.inner_text().strip() == "0"

            before = page.evaluate(_INSPECTOR_PLOTS_JS)
            handle = slider.locator(".noUi-handle")
            handle.scroll_into_view_if_needed()
            handle.focus()
            page.keyboard.press("ArrowRight")
            page.keyboard.press("ArrowRight")
            page.wait_for_function(
                "() => { const s = Array.from(document.querySelectorAll("
                "'.workbench-latent-inspector .widget-slider')).find(e => "
                "e.querySelector('.widget-label').textContent.trim() === 'step');"
                " return s && s.querySelector('.widget-readout').textContent.trim() === '2'; }",
                timeout=30_000,
            )
            # the kernel redraws the step's bar chart ("read 2 ...") and moves the other markers
            deadline = time.monotonic() + 90
            after = before
            while time.monotonic() < deadline:
                after = page.evaluate(_INSPECTOR_PLOTS_JS)
                changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
                if len(changed) >= 3 and any('"title":"read 2 ' in a for a in after):
                    break
                time.sleep(1.0)
            assert after != before, "moving the step slider did not change the inspector's figures"
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
            assert len(changed) >= 3, (
                f"only figure(s) {changed} changed"
            )  # bar + markers of heatmaps and curve
            assert any('"title":"read 2 ' in a for a in after), (
                f"the step figure does not show read 2: {after}"
            )

            page.wait_for_timeout(1500)  # let plotly finish its transition before the picture
            inspector.scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
        except Exception:
            failure = shot.with_name("05_latent_trajectories.failure.png")
            page.screenshot(path=str(failure))
            _keep(failure)
            raise
        finally:
            ctx.close()
    assert shot.stat().st_size > 10_000
    _keep(shot)
    metrics = json.loads((lab["out_dir"] / "metrics.json").read_text())
    assert metrics["n_examples"] == _smoke_params().get("n_examples", metrics["n_examples"])
    assert (lab["out_dir"] / "latent_trajectories.html").is_file()
