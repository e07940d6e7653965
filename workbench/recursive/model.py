"""The recursive reasoner: TRM's one tiny shared net and (y, z) carry, plus DIS's changes.

RESEARCH Part B 4.1 (TRM, arXiv 2510.04871) and 4.2 (DIS, arXiv 2511.16886), at the CPU scale of
4.3. One supervision step (:meth:`RecursiveReasoner.step`) is TRM's ``deep_recursion``::

    x = embed(tokens) [+ timestep embedding under DIS], with puzzle-embedding positions prepended
    repeat T times (the first T-1 without gradient):
        repeat n times: z <- net(z + y + x)      # "z = f(x, y, z)"
        y <- net(y + z)                          # "y = f(y, z)"
    logits = lm_head(y[cells]);  q_halt = q_head(y[0])

and returns the carry detached, so deep supervision trains one step at a time. ``net`` is a
stack of post-norm blocks: a token mixer (an MLP over the sequence axis, TRM-MLP, or attention)
then a SwiGLU over channels, each followed by a weightless RMSNorm. y and z start from fixed,
untrained trunc-normal buffers. Under DIS (``dis=True``) the input tokens of step s >= 2 are the
model's own argmax prediction of step s-1 (see :meth:`RecursiveReasoner.rollout`) and the
output vocabulary keeps the blank class, because DIS's intermediate targets have blanks.

Deviations from RESEARCH 4.1-4.2 (all for CPU scale or simplicity):

* the puzzle embedding is ``puzzle_emb_len`` learned positions shared by all puzzles, trained
  with AdamW (TRM's Sudoku data has a single puzzle identifier, so this is the same model; TRM
  trains it with sparse SignSGD);
* attention uses learned absolute positions instead of RoPE; TRM-MLP has none, as in TRM;
* SwiGLU widths are ``round(expansion * dim * 2/3)``, not rounded up to a multiple of 256;
* the Q-head has one logit (TRM's ``no_ACT_continue=True``: no continue target);
* sizes: hidden 128, 2 layers, 4 puzzle positions, T=2, n=3, N_sup=8 (RESEARCH 4.3) by default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from workbench.config import ConfigError, check_choice, check_range, check_that, config_from_dict
from workbench.errors import CheckpointError
from workbench.io import atomic_folder, atomic_save_safetensors, atomic_write_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "workbench.recursive/1"


@dataclass
class RecursiveConfig:
    """Architecture and recursion schedule of a :class:`RecursiveReasoner`."""

    size: int = 9
    """Sudoku side: 4 (16 cells) or 9 (81 cells)."""
    hidden: int = 128
    """Width D of y, z and every layer."""
    layers: int = 2
    """Blocks in the shared net (TRM: 2)."""
    mixer: str = "mlp"
    """Token mixer: ``"mlp"`` (an MLP over the sequence axis, TRM-MLP) or ``"attention"``."""
    heads: int = 4
    """Attention heads (``mixer="attention"`` only); must divide ``hidden``."""
    expansion: float = 4.0
    """SwiGLU expansion; the inner width is ``round(expansion * dim * 2/3)``."""
    puzzle_emb_len: int = 4
    """Learned positions prepended to the cells; the Q-head reads the first one."""
    T: int = 2
    """Cycles per supervision step; the first T-1 run without gradient."""
    n: int = 3
    """Latent updates of z per cycle, each followed by one update of y."""
    n_sup: int = 8
    """Supervision steps (TRM's ``halt_max_steps``); evaluation always runs all of them."""
    halting: bool = True
    """Train a Q-head that halts an example early during training (TRM's ACT)."""
    dis: bool = False
    """Deep Improvement Supervision: timestep embedding, own-prediction input, path targets."""

    def __post_init__(self):
        check_choice(self, "size", (4, 9))
        check_range(self, "hidden", ge=8, integer=True)
        check_range(self, "layers", ge=1, integer=True)
        check_choice(self, "mixer", ("mlp", "attention"))
        check_range(self, "heads", ge=1, integer=True)
        check_that(
            self,
            "heads",
            self.mixer != "attention" or self.hidden % self.heads == 0,
            f"a divisor of hidden = {self.hidden}",
        )
        check_range(self, "expansion", gt=0)
        check_range(self, "puzzle_emb_len", ge=1, integer=True)
        check_range(self, "T", ge=1, integer=True)
        check_range(self, "n", ge=1, integer=True)
        check_range(self, "n_sup", ge=1, integer=True)
        check_that(
            self,
            "halting",
            not (self.halting and self.dis),
            "False when dis = True (DIS trains a fixed n_sup steps without a halting head)",
        )

    @property
    def cells(self) -> int:
        return self.size * self.size

    @property
    def vocab(self) -> int:
        """Token classes: 0 = blank, then the digits 1..size."""
        return self.size + 1

    @property
    def nfp_per_step(self) -> int:
        """Forward passes of the net per supervision step, T(n+1) (RESEARCH 4.2(b))."""
        return self.T * (self.n + 1)


def preset(arm: str, size: int = 9, **overrides) -> RecursiveConfig:
    """The three arms of RESEARCH 4.3: ``"single"`` pass, ``"trm"`` (halting), ``"dis"``."""
    arms = {
        "single": dict(T=1, n=1, n_sup=1, halting=False),
        "trm": dict(T=2, n=3, n_sup=8, halting=True),
        "dis": dict(T=1, n=2, n_sup=6, halting=False, dis=True),
    }
    if arm not in arms:
        raise ConfigError(f"arm = {arm!r}: expected one of {sorted(arms)}")
    return RecursiveConfig(size=size, **{**arms[arm], **overrides})


class Carry(NamedTuple):
    """The state carried between supervision steps: y (answer) and z (latent), [B, S, D]."""

    y: torch.Tensor
    z: torch.Tensor


class Rollout(NamedTuple):
    """Readouts of an n_sup-step rollout (no gradient).

    ``logits[0]`` is the readout of the initial carry (the reference ℓ_u of step 1) and
    ``logits[s]`` that after step s: ``[n_sup + 1, B, cells, vocab]``. ``q_halt`` is
    ``[n_sup, B]`` (None without a halting head).
    """

    logits: torch.Tensor
    q_halt: torch.Tensor | None


def _rms_norm(h: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(h, (h.shape[-1],), eps=1e-5)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, expansion: float):
        super().__init__()
        inner = max(1, round(expansion * dim * 2 / 3))
        self.gate_up = nn.Linear(dim, 2 * inner, bias=False)
        self.down = nn.Linear(inner, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, d // self.heads).transpose(1, 3).unbind(2)
        att = F.scaled_dot_product_attention(q, k, v)
        return self.out(att.transpose(1, 2).reshape(b, s, d))


class Block(nn.Module):
    """Post-norm: h <- norm(h + mix(h)); h <- norm(h + swiglu(h))."""

    def __init__(self, cfg: RecursiveConfig, seq_len: int):
        super().__init__()
        self.token_mlp = cfg.mixer == "mlp"
        self.mix = (
            SwiGLU(seq_len, cfg.expansion)
            if self.token_mlp
            else SelfAttention(cfg.hidden, cfg.heads)
        )
        self.mlp = SwiGLU(cfg.hidden, cfg.expansion)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.token_mlp:  # mix along the sequence axis
            h = _rms_norm(h + self.mix(h.transpose(1, 2)).transpose(1, 2))
        else:
            h = _rms_norm(h + self.mix(h))
        return _rms_norm(h + self.mlp(h))


class RecursiveReasoner(nn.Module):
    """TRM (or DIS with ``cfg.dis``) over a Sudoku grid; see the module docstring."""

    def __init__(self, cfg: RecursiveConfig):
        super().__init__()
        self.cfg = cfg
        d, p = cfg.hidden, cfg.puzzle_emb_len
        seq = p + cfg.cells
        self.embed_scale = math.sqrt(d)
        self.embed = nn.Embedding(cfg.vocab, d)
        nn.init.trunc_normal_(self.embed.weight, std=1 / self.embed_scale)
        self.puzzle_emb = nn.Parameter(torch.zeros(p, d))
        self.pos_emb = (
            nn.Parameter(torch.randn(seq, d) / self.embed_scale)
            if cfg.mixer == "attention"
            else None
        )
        self.time_emb = None
        if cfg.dis:
            self.time_emb = nn.Embedding(cfg.n_sup + 1, d)
            nn.init.trunc_normal_(self.time_emb.weight, std=1 / self.embed_scale)
        self.blocks = nn.ModuleList(Block(cfg, seq) for _ in range(cfg.layers))
        self.lm_head = nn.Linear(d, cfg.vocab, bias=False)
        self.q_head = None
        if cfg.halting:  # starts at "never halt" (W=0, b=-5) as in TRM
            self.q_head = nn.Linear(d, 1)
            nn.init.zeros_(self.q_head.weight)
            nn.init.constant_(self.q_head.bias, -5.0)
        self.register_buffer("y_init", nn.init.trunc_normal_(torch.empty(d), std=1.0))
        self.register_buffer("z_init", nn.init.trunc_normal_(torch.empty(d), std=1.0))

    def initial_carry(self, batch: int) -> Carry:
        shape = (batch, self.cfg.puzzle_emb_len + self.cfg.cells, self.cfg.hidden)
        return Carry(self.y_init.expand(shape).clone(), self.z_init.expand(shape).clone())

    def input_embedding(self, tokens: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, cells] and supervision step ``t`` [B] (1-based) -> x [B, S, D]."""
        h = self.embed(tokens)
        if self.time_emb is not None:
            h = h + self.time_emb(t)[:, None, :]
        h = torch.cat([self.puzzle_emb.expand(len(tokens), -1, -1), h], dim=1)
        if self.pos_emb is not None:
            h = h + self.pos_emb
        return self.embed_scale * h

    def net(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return h

    def _cycle(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> Carry:
        for _ in range(self.cfg.n):
            z = self.net(z + y + x)
        return Carry(self.net(y + z), z)

    def readout(self, y: torch.Tensor) -> torch.Tensor:
        return self.lm_head(y[:, self.cfg.puzzle_emb_len :])

    def step(
        self, carry: Carry, tokens: torch.Tensor, t: torch.Tensor
    ) -> tuple[Carry, torch.Tensor, torch.Tensor | None]:
        """One supervision step: (detached new carry, logits [B, cells, vocab], q_halt [B])."""
        x = self.input_embedding(tokens, t)
        y, z = carry
        with torch.no_grad():
            for _ in range(self.cfg.T - 1):
                y, z = self._cycle(x, y, z)
        y, z = self._cycle(x, y, z)
        q = self.q_head(y[:, 0]).squeeze(-1) if self.q_head is not None else None
        return Carry(y.detach(), z.detach()), self.readout(y), q

    def next_tokens(self, puzzles: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Input of the next step: the puzzle (TRM) or the argmax prediction ``pred`` (DIS)."""
        return pred if self.cfg.dis else puzzles

    @torch.no_grad()
    def rollout(self, puzzles: torch.Tensor) -> Rollout:
        """All ``n_sup`` steps on ``puzzles`` [B, cells], as at evaluation (no halting).

        Runs on the model's device and returns CPU tensors, so the diagnostics never move data.
        """
        puzzles = puzzles.to(self.y_init.device)
        carry = self.initial_carry(len(puzzles))
        logits, qs = [self.readout(carry.y)], []
        tokens = puzzles
        for s in range(1, self.cfg.n_sup + 1):
            t = torch.full((len(puzzles),), s, dtype=torch.long, device=puzzles.device)
            carry, out, q = self.step(carry, tokens, t)
            logits.append(out)
            qs.append(q)
            tokens = self.next_tokens(puzzles, out.argmax(-1))
        q_halt = torch.stack(qs).float().cpu() if self.q_head is not None else None
        return Rollout(torch.stack(logits).float().cpu(), q_halt)

    def solve(self, puzzles: torch.Tensor) -> torch.Tensor:
        """The final prediction [B, cells] (digits; 0 if the model still predicts a blank)."""
        return self.rollout(puzzles).logits[-1].argmax(-1)


# ------------------------------------------------------------------------------ save / load


def save_model(model: RecursiveReasoner, path: str | Path) -> Path:
    """Write ``model`` to folder ``path`` (``config.json`` + ``model.safetensors``), atomically."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_folder(path) as tmp:
        atomic_save_safetensors(tmp / WEIGHTS_FILE, tensors)
        atomic_write_json(
            tmp / CONFIG_FILE,
            {"format": FORMAT, "config": dataclasses.asdict(model.cfg)},
            indent=2,
        )
    return Path(path)


def load_config(path: str | Path) -> RecursiveConfig:
    """The :class:`RecursiveConfig` saved in checkpoint folder ``path``."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE}; not a recursive-reasoner checkpoint")
    try:
        meta = json.loads(file.read_text())
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{file}: format {meta.get('format')!r}, expected {FORMAT!r}")
        return config_from_dict(RecursiveConfig, meta["config"], source=str(file))
    except (json.JSONDecodeError, KeyError, AttributeError, ConfigError) as err:
        raise CheckpointError(f"{file}: unreadable config ({err})") from None


def load_model(path: str | Path, config: RecursiveConfig | None = None) -> RecursiveReasoner:
    """Load a checkpoint folder; with ``config``, refuse one saved under another config.

    A mismatch raises :class:`CheckpointError` naming the first differing field.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    saved = load_config(path)
    if config is not None:
        for field in dataclasses.fields(RecursiveConfig):
            mine, theirs = getattr(config, field.name), getattr(saved, field.name)
            if mine != theirs:
                raise CheckpointError(
                    f"{path}: saved with RecursiveConfig.{field.name} = {theirs!r}, "
                    f"but the config asks for {mine!r}"
                )
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {WEIGHTS_FILE}")
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: unreadable weights ({err})") from None
    model = RecursiveReasoner(saved)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{file}: weights do not fit the saved config ({err})") from None
    return model
