"""Small ("smoke") parameters for the papermill runs of the notebooks in tests/test_notebooks.py.

``SMOKE_PARAMS`` maps a notebook's file name (``"01_coconut.ipynb"``) to the overrides that make
it run in well under a minute on 2 CPU cores: a tiny model, a handful of steps, a few examples.
The harness adds ``out_dir`` itself (a fresh temporary folder), so leave that out. Every name
must exist in the notebook's ``parameters`` cell and match its annotated type; this is checked
before any kernel starts (``workbench.sweep.validate_parameters``), and a test fails for a key
that names no notebook. A notebook without an entry runs with its own defaults.

Example::

    SMOKE_PARAMS = {
        "01_coconut.ipynb": {"smoke": True, "steps": 20, "n_eval": 16},
    }
"""

from __future__ import annotations

SMOKE_PARAMS: dict[str, dict] = {
    "00_quickstart.ipynb": {
        "cot_minutes": 0.1,
        "nocot_minutes": 0.05,
        "train_size": 400,
        "test_size": 16,
        "eval_every": 5,
        "digits": 2,
    },
    "01_coconut.ipynb": {
        "init_from": "scratch",
        "cot_minutes": 0.1,
        "nocot_minutes": 0.05,
        "steps_per_stage": 3,
        "final_stage_steps": 3,
        "batch_size": 8,
        "digits": 2,
        "max_latent_stage": 2,
        "train_size": 400,
        "test_size": 16,
    },
    "03_vae.ipynb": {
        "steps_per_stage": 3,
        "final_stage_steps": 3,
        "kl_warmup_steps": 2,
        "batch_size": 8,
        "train_size": 400,
        "test_size": 16,
    },
    "04_rl.ipynb": {
        "steps": 2,
        "questions": 2,
        "generations": 3,
        "latent_length": 2,
        "test_size": 16,
    },
    "02_latent_sft.ipynb": {
        "init_from": "scratch",
        "cot_minutes": 0.1,
        "nocot_minutes": 0.05,
        "encoder_steps": 2,
        "decoder_steps": 2,
        "union_steps": 2,
        "stage2_steps": 3,
        "batch_size": 8,
        "train_size": 64,
        "digits": 2,
        "test_size": 16,
        "max_latent_steps": 4,
    },
    "05_latent_trajectories.ipynb": {"smoke": True, "n_examples": 8, "top_k": 5},
    "06_recursive.ipynb": {
        "init_from": "scratch",
        "train_steps": 3,
        "train_size": 40,
        "test_size": 16,
        "hidden": 16,
        "layers": 1,
    },
}
