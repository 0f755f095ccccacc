"""``lamina check MODEL``: verify that a model's sites mean what lamina says they mean.

On a few built-in sentences of different lengths:

1. hooks on every site leave the logits bit-identical (and are all removed afterwards);
2. the residual sites equal Hugging Face's ``output_hidden_states`` where they coincide (``resid_pre[l] ==
   hidden_states[l]``; the last entry is the final norm's output or the last block's output, as the adapter
   says), and the ``logits`` site equals HF's logits;
3. ``resid_post == resid_pre + attn_out + mlp_out`` in every block where the family claims it (post-norm
   families are listed as exempt, with the reason);
4. right-padded, left-padded and one-text-at-a-time captures of every site agree;
5. q/k/v widths are ``n_heads x d_head`` and ``n_kv_heads x d_head``.

Errors are ``max |a - b| / (|b| + rms(b))`` over all compared values (relative to each value and to the tensor's
typical size, so massive-activation dimensions neither hide nor fake a difference). :func:`ensure_checked` runs
the check once per model hash and remembers the outcome under the cache dir.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch

from .._io import atomic_write_text, json_dumps
from ..paths import cache_dir
from .hooks import hooked
from .sites import hook_point, parse_site

__all__ = ["SENTENCES", "CheckResult", "CheckReport", "check_model", "ensure_checked", "model_hash"]

#: Built-in sentences: different lengths, so batches are really padded.
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Coffee is a drink; coffee beans are roasted before they are ground.",
    "A short one.",
)

#: Same computation along two code paths (a hook vs HF's own output; our sum vs the block's sum): float32
#: round-off only, at most a few units of the dtype's epsilon (1.2e-7) per operation; 100 eps leaves room for
#: summation order while a wrong site is off by O(1).
SAME_EPS = 100
#: Padded vs unpadded batches: other matrix shapes change the kernels' summation order in every layer and the
#: differences compound with depth (worst seen: 125 eps, a mid-depth mlp.hook_post of 30-layer SmolLM2); 10^4 eps
#: (1.2e-3 in float32) leaves room for deeper and wider models, while a padding or position bug is O(0.1-1).
PADDED_EPS = 10_000


@dataclass
class CheckResult:
    """One verified property: ``passed`` is None for an exempt check (``detail`` says why)."""

    name: str
    passed: bool | None
    error: float | None = None
    tolerance: float | None = None
    detail: str = ""


@dataclass
class CheckReport:
    """All checks of one model; ``passed`` only if none failed. ``absent`` lists the site kinds the family does
    not have (and why); ``notes`` says what its sites mean where it differs."""

    model: str
    arch: str
    model_type: str
    results: list[CheckResult]
    notes: str = ""
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed is not False for r in self.results)

    def as_dict(self) -> dict:
        return {"model": self.model, "arch": self.arch, "model_type": self.model_type, "passed": self.passed,
                "checks": [asdict(r) for r in self.results], "absent_sites": self.absent, "notes": self.notes}

    def table(self) -> str:
        """A plain-text table, one check per row, then the absent sites and the family's notes."""
        rows = [("check", "result", "error", "tolerance", "detail")]
        for r in self.results:
            rows.append((r.name, {True: "pass", False: "FAIL", None: "exempt"}[r.passed],
                         "" if r.error is None else f"{r.error:.2e}",
                         "" if r.tolerance is None else f"{r.tolerance:.1e}", r.detail))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [f"# {self.model}: {self.arch} adapter, model type {self.model_type}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
        lines += [f"no site {k}: {v}" for k, v in self.absent.items()]
        if self.notes:
            lines.append(f"notes: {self.notes}")
        lines.append("all checks passed" if self.passed else "some checks FAILED")
        return "\n".join(lines)


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    scale = b.abs() + b.pow(2).mean().sqrt()
    return float(((a - b).abs() / scale.clamp_min(1e-30)).max()) if b.numel() else 0.0


def _result(name: str, errors: list[float], eps: float, detail: str) -> CheckResult:
    worst = max(errors) if errors else 0.0
    return CheckResult(name, worst <= eps, worst, eps, detail)


def _forward_kwargs(model, enc) -> dict:
    kwargs = {"input_ids": enc["input_ids"].to(model.device), "attention_mask": enc["attention_mask"].to(model.device)}
    if not model.is_masked_lm:
        kwargs["use_cache"] = False
    return kwargs


def _reader(part, seen: list, previous=None):
    """A hook function that reads (part of) a tensor, after ``previous`` for the same module; returns None."""

    def read(t: torch.Tensor) -> None:
        if previous is not None:
            previous(t)
        seen.append(part(t).clone())

    return read


def _check_hooks(model, texts) -> CheckResult:
    """Hooks reading (and slicing) every site leave the logits bit-identical, and are all removed."""
    can_pad = model.tokenizer.pad_token is not None  # else one text: a batch needs a pad token
    enc = model.tokenizer(list(texts) if can_pad else list(texts[:1]), return_tensors="pt", padding=can_pad)
    kwargs = _forward_kwargs(model, enc)
    def count() -> int:  # transformers may keep hooks of its own: compare counts, not zero
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())

    before_hooks = count()
    seen: list[torch.Tensor] = []
    hooks = {}
    for site in model.sites():
        layer, _ = parse_site(site)
        point = hook_point(model.adapter, site)
        part = (point.part(model.config) if point.part else None) or (lambda t: t)
        key = (model.resolve_path(point.module_path(layer)), point.io)
        hooks[key] = _reader(part, seen, hooks.get(key))
    with torch.no_grad():
        plain = model.hf(**kwargs).logits
        with hooked(model.hf, hooks):
            hooked_logits = model.hf(**kwargs).logits
        after = model.hf(**kwargs).logits
    same = torch.equal(plain, hooked_logits) and torch.equal(plain, after)
    removed = count() == before_hooks
    diff = float((plain - hooked_logits).abs().max())
    return CheckResult("hooks leave logits bit-identical", same and removed and len(seen) >= len(hooks), diff, 0.0,
                       f"{len(hooks)} hooked modules, {len(seen)} reads; hooks removed: {removed}")


def _check_hidden_states(model, texts, eps) -> list[CheckResult]:
    from .run import capture, residual_sites

    last = f"blocks.{model.n_layers - 1}.hook_resid_post"
    normed = model.adapter.final_norm is not None
    after = model.module(model.adapter.last_hidden) if model.adapter.last_hidden else (lambda t: t)
    sites = residual_sites(model) + ["logits"] + (["ln_final.hook_out"] if normed else [])
    inner, final, logits = [], [], []
    for text in texts:
        acts = capture(model, text, sites)
        enc = model.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = model.hf(**_forward_kwargs(model, enc), output_hidden_states=True)
        hs = [h[0].cpu() for h in out.hidden_states]
        inner += [_error(acts[f"blocks.{l}.hook_resid_pre"], hs[l]) for l in range(model.n_layers)]
        with torch.no_grad():
            final.append(_error(after(acts["ln_final.hook_out" if normed else last].to(model.device)).cpu(), hs[-1]))
        logits.append(_error(acts["logits"], out.logits[0].cpu()))
    which = "ln_final.hook_out" if normed else "the last hook_resid_post"
    which += f" then {model.adapter.last_hidden}" if model.adapter.last_hidden else ""
    return [_result("resid_pre[l] == HF hidden_states[l]", inner, eps, f"{model.n_layers} layers x {len(texts)} texts"),
            _result("HF last hidden state", final, eps, f"equals {which}"),
            _result("logits == HF logits", logits, eps, "the logits site vs the HF forward's output")]


def _check_identity(model, texts, eps) -> CheckResult:
    from .run import capture

    if not model.adapter.pre_norm:
        return CheckResult("resid_post == resid_pre + attn_out + mlp_out", None,
                           detail=f"{model.arch} blocks are post-norm (a LayerNorm follows each residual add)")
    acts = capture(model, list(texts), "blocks.*.hook_resid_pre,blocks.*.hook_resid_post,blocks.*.hook_attn_out,"
                                       "blocks.*.hook_mlp_out")
    errors = [_error(acts[f"blocks.{l}.hook_resid_pre"] + acts[f"blocks.{l}.hook_attn_out"]
                     + acts[f"blocks.{l}.hook_mlp_out"], acts[f"blocks.{l}.hook_resid_post"])
              for l in range(model.n_layers)]
    return _result("resid_post == resid_pre + attn_out + mlp_out", errors, eps, f"every block ({model.n_layers})")


def _check_padding(model, texts, eps) -> list[CheckResult]:
    from .run import capture

    sites = model.sites()
    alone = [capture(model, t, sites) for t in texts]
    out = []
    for side in ("right", "left"):
        batch = capture(model, list(texts), sites, batch_size=len(texts), padding_side=side)
        errors = [_error(batch[s][batch.rows.for_text(i)], a[s]) for i, a in enumerate(alone) for s in sites]
        out.append(_result(f"{side}-padded batch == one text at a time", errors, eps, f"{len(sites)} sites"))
    return out


def _check_widths(model) -> CheckResult:
    n_heads, n_kv, d_head = model.adapter.heads(model.config)
    widths = model.site_widths()
    want = {"attn.hook_q": n_heads * d_head, "attn.hook_k": n_kv * d_head, "attn.hook_v": n_kv * d_head}
    bad = [f"{s}={w} (want {want[k]})" for s, w in widths.items() if (k := parse_site(s)[1]) in want
           and w != want[k]]
    detail = f"q {n_heads}x{d_head}, k/v {n_kv}x{d_head}" + (f"; wrong: {', '.join(bad[:3])}" if bad else "")
    return CheckResult("q/k/v widths == heads x d_head", not bad, detail=detail)


def check_model(model, texts=None) -> CheckReport:
    """Run every check on ``model`` (see the module docstring) and return the report.

    Args:
        model: a loaded :class:`~lamina.capture.models.Model`.
        texts: sentences to check on (default :data:`SENTENCES`); use a few of different lengths.
    """
    texts = tuple(texts or SENTENCES)
    dtype_eps = torch.finfo(model.dtype).eps
    same, padded = SAME_EPS * dtype_eps, PADDED_EPS * dtype_eps
    results = [_check_hooks(model, texts)]
    results += _check_hidden_states(model, texts, same)
    results.append(_check_identity(model, texts, same))
    results += _check_padding(model, texts, padded)
    results.append(_check_widths(model))
    return CheckReport(model.name, model.arch, str(getattr(model.config, "model_type", "?")), results,
                       model.adapter.notes, dict(model.adapter.unavailable))


def model_hash(model) -> str:
    """A key for a model's check outcome: its provenance (weights hash or hub revision), dtype, device, adapter and
    the lamina and transformers versions."""
    import transformers

    from .. import _version

    blob = json.dumps({"provenance": {k: v for k, v in model.provenance.items() if k not in ("path", "name")},
                       "dtype": str(model.dtype), "device": str(model.device), "adapter": model.arch,
                       "lamina": _version.__version__, "transformers": transformers.__version__},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def ensure_checked(model) -> dict:
    """The check outcome of ``model``: run once per model hash, then read from ``cache_dir("checks")``.

    Returns:
        ``CheckReport.as_dict()`` plus ``"key"`` (the model hash) and ``"cached"`` (True when remembered).
    """
    key = model_hash(model)
    path = cache_dir("checks", f"{key}.json")
    if path.is_file():
        try:
            return {**json.loads(path.read_text(encoding="utf-8")), "cached": True}
        except (OSError, ValueError):
            pass  # unreadable: check again
    outcome = {**check_model(model).as_dict(), "key": key}
    atomic_write_text(path, json_dumps(outcome))
    return {**outcome, "cached": False}
