"""logit-lens: read every layer's residual stream with the model's own output head.

Decoders: each hidden state at each position goes through the real final norm and unembedding modules; the top
prediction per layer and position (as text), and the rank and probability of the final prediction through the
layers. The chapter's example: GPT-2 on "The way you do anything is the way you do everything" predicts "it"
after "do" at layer 3 of 12.

Masked LMs (BERT): a word is masked and each hidden state at the mask goes through the whole MLM head
(transform: dense + activation + LayerNorm, then the decoder) -- the right way -- and, for contrast, through
the decoder weights only -- the wrong way; the z-score of the masked word's logit among the vocabulary for
both. The lesson: at the third-to-last hidden state the wrong way gives a nonsense token (z < 3), the right
way the correct token (z ~ 30).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture import capture, residual_sites, select
from ..errors import LaminaError
from ..stats import bootstrap_curve_ci
from .base import StudyOutput, register, scaled_layer
from .logit_lens_claims import claims, extreme_z  # noqa: F401 - the framework reads `claims`

FIGURE_POSITIONS = 32


@dataclass(frozen=True)
class LogitLensConfig:
    """Settings of logit-lens.

    Attributes:
        text: the input (``--text-file`` replaces it).
        word: decoders: the word after which the lens prediction is reported.
        expected: decoders: the write-up's prediction after ``word`` at the early layer.
        layer: decoders: the early layer (None: layer 3 of 12 scaled to the model).
        mask_word: masked LMs: the word replaced by the mask token (its first occurrence).
        top_k: tokens listed per layer at the reported position.
        alpha: significance level of the claims' tests.
        n_bootstrap: bootstrap resamples of the positions (CIs of the per-layer rank curve and settle depth).
        seed: seed of the bootstrap and of the permutation tests.
    """

    text: str = "The way you do anything is the way you do everything"
    word: str = "do"
    expected: str = "it"
    layer: int | None = None
    mask_word: str = "way"
    top_k: int = 5
    alpha: float = 0.05
    n_bootstrap: int = 1000
    seed: int = 0

    def __post_init__(self):
        from . import _checks as check

        if not self.text.strip() or not self.word.strip() or not self.mask_word.strip():
            raise LaminaError("text, word and mask_word must not be empty")
        check.layer("layer", self.layer)
        check.at_least("top_k", self.top_k, 1)
        check.between("alpha", self.alpha, 0, 1)
        check.at_least("n_bootstrap", self.n_bootstrap, 100)  # a 95% CI from fewer resamples is too coarse
        check.seed("seed", self.seed)

    def check_model(self, model) -> None:
        """Settings whose range depends on the model (the runner calls this after loading, before computing)."""
        from . import _checks as check

        check.layer_of("layer", self.layer, model.n_layers + 1, model.name, "hidden states")
        head = model.hf.get_output_embeddings()
        vocab = int(head.out_features if hasattr(head, "out_features") else model.config.vocab_size)
        if self.top_k > vocab:
            raise LaminaError(f"top_k={self.top_k} is larger than {model.name}'s vocabulary ({vocab} tokens); "
                              f"choose at most {vocab}")


def _decode(model, ids) -> list[str]:
    return [model.tokenizer.decode([int(i)]) for i in ids]


@register("logit-lens", "Each layer's residual stream read through the model's own head (decoders and BERT)",
          LogitLensConfig)
def compute(model, config: LogitLensConfig, inputs) -> StudyOutput:
    text = (inputs.get("text") or config.text).strip()
    if model.is_masked_lm:
        return _masked(model, config, text)
    return _causal(model, config, text)


def _lens_modules(model):
    from ..capture.sites import readout

    return readout(model)  # the model's own final norm, head modules and logit soft-cap/scale, in order


def _causal(model, config: LogitLensConfig, text: str) -> StudyOutput:
    acts = capture(model, text, residual_sites(model) + ["logits"], cache=True)
    hidden = acts.residual_stream()  # (L + 1, T, d)
    lens = _lens_modules(model)
    n_states, n_tokens = hidden.shape[0], hidden.shape[1]
    model_logits = acts["logits"].double()
    final_ids = model_logits.argmax(-1)  # (T,)
    L = n_states - 1
    early = config.layer if config.layer is not None else scaled_layer(3, 12, L)
    if not 0 <= early <= L:
        raise LaminaError(f"layer {early} does not exist; {model.name} has hidden states 0-{L}")
    tokens = list(acts.rows.token)
    word_pos = [int(p) for p in select.word(config.word)(_tokenized(model, text))]
    expected_ids = _expected_ids(model, config.expected)
    top_ids = np.zeros((n_states, n_tokens), dtype=np.int64)
    top_prob, final_rank, final_prob, kl = (np.zeros((n_states, n_tokens)) for _ in range(4))
    expected_rank = np.zeros((n_states, len(word_pos)))  # best rank of a token spelling `expected`, per occurrence
    target_logp = torch.log_softmax(model_logits, -1)
    with torch.no_grad():
        for layer in range(n_states):
            logits = lens(hidden[layer].to(model.device, model.dtype)).double().cpu()
            if layer == n_states - 1:
                lens_error = float((logits - model_logits).abs().max())
            if layer == early:
                at_word = [{"position": p, "token": tokens[p],
                            "next_token": tokens[p + 1] if p + 1 < n_tokens else None,
                            "top_tokens": _decode(model, torch.topk(logits[p], config.top_k).indices.tolist())}
                           for p in word_pos]
            logp = torch.log_softmax(logits, -1)
            top_ids[layer] = logits.argmax(-1).numpy()
            top_prob[layer] = logp.max(-1).values.exp().numpy()
            own = logits.gather(1, final_ids[:, None])
            final_rank[layer] = (logits > own).sum(-1).numpy()
            final_prob[layer] = logp.gather(1, final_ids[:, None]).exp().squeeze(1).numpy()
            kl[layer] = (target_logp.exp() * (target_logp - logp)).sum(-1).numpy()
            for i, p in enumerate(word_pos):
                expected_rank[layer, i] = min((int((logits[p] > logits[p, e]).sum()) for e in expected_ids),
                                              default=np.nan)
    vocab = int(model_logits.shape[-1])
    log_rank = np.log10(final_rank + 1)
    per_layer = [{"layer": layer, "final_rank_median": float(np.median(final_rank[layer])),
                  "final_log10_rank_mean": float(log_rank[layer].mean()),
                  "final_prob_mean": float(final_prob[layer].mean()), "kl_to_final_mean": float(kl[layer].mean()),
                  "top_prob_mean": float(top_prob[layer].mean())} for layer in range(n_states)]
    if n_tokens >= 2:
        lo, hi = bootstrap_curve_ci(log_rank, n_resamples=config.n_bootstrap, seed=config.seed)
        for row, a, b in zip(per_layer, lo, hi):
            row["final_log10_rank_ci"] = [float(a), float(b)]
    for w, i in zip(at_word, range(len(word_pos))):
        w["expected_rank"] = None if np.isnan(expected_rank[early, i]) else int(expected_rank[early, i])
        top1 = np.flatnonzero(expected_rank[:, i] == 0)
        w["first_layer_expected_top1"] = int(top1[0]) if top1.size else None
    results = {"kind": "causal", "text": text, "tokens": tokens, "layer": early, "vocab_size": vocab,
               "expected_token_ids": expected_ids, "final_predictions": _decode(model, final_ids.tolist()),
               "lens_vs_model_logits_max_abs": lens_error, "at_word": at_word,
               "grid_top_tokens": [_decode(model, row) for row in top_ids], "per_layer": per_layer,
               "chance_log10_rank": float(np.log10(vocab / 2))}
    arrays = {"top_prob": top_prob, "final_rank": final_rank, "final_prob": final_prob, "kl": kl,
              "expected_rank": expected_rank}
    return StudyOutput(results, [], arrays=arrays, resolved={"layer": early})


def _expected_ids(model, word: str) -> list[int]:
    """Vocabulary ids of the single tokens that spell ``word`` (with or without a leading space)."""
    ids = set()
    for form in (word.strip(), " " + word.strip()):
        enc = model.tokenizer(form, add_special_tokens=False)["input_ids"]
        if len(enc) == 1 and model.tokenizer.decode(enc).strip() == word.strip():
            ids.add(int(enc[0]))
    return sorted(ids)


def _tokenized(model, text: str):
    from ..capture import tokenize

    return tokenize(model, [text])[0]


def _masked(model, config: LogitLensConfig, text: str) -> StudyOutput:
    tok = model.tokenizer
    if tok.mask_token is None:
        raise LaminaError(f"{model.name}'s tokenizer has no mask token")
    spans = select.find_word_spans(text, config.mask_word)
    if not spans:
        raise LaminaError(f"mask_word {config.mask_word!r} not found in the text; choose a word of the text")
    start, end = spans[0]
    masked = text[:start] + tok.mask_token + text[end:]
    target_ids = tok(text[start:end], add_special_tokens=False)["input_ids"]
    if len(target_ids) != 1:
        raise LaminaError(f"{config.mask_word!r} is {len(target_ids)} tokens for {model.name}; mask a word that "
                          "is one token")
    target = target_ids[0]
    at_mask = select.where(lambda t: [t.ids.index(tok.mask_token_id)], key="mask-token")
    acts = capture(model, masked, residual_sites(model) + ["logits"], positions=at_mask, cache=True)
    hidden = acts.residual_stream()[:, 0]  # (L + 1, d) at the mask
    head = _lens_modules(model)  # the whole MLM head (after the encoder's final norm, if it has one)
    decoder = model.module(model.adapter.extra["mlm_decoder"])
    per_layer = []
    with torch.no_grad():
        right_all = head(hidden[:, None, :].to(model.device, model.dtype)).double().cpu()[:, 0]  # (L + 1, V)
        wrong_all = decoder(hidden.to(model.device, model.dtype)).double().cpu()
    lens_error = float((right_all[-1] - acts["logits"][0].double()).abs().max())
    for layer in range(hidden.shape[0]):
        row = {"layer": layer}
        for name, logits in (("right", right_all[layer]), ("wrong", wrong_all[layer])):
            z = (logits - logits.mean()) / logits.std()
            row[name] = {"target_z": float(z[target]), "target_rank": int((logits > logits[target]).sum()),
                         "top_token": _decode(model, [int(logits.argmax())])[0], "top_z": float(z.max())}
        per_layer.append(row)
    results = {"kind": "masked", "text": masked, "target": tok.decode([target]), "per_layer": per_layer,
               "lens_vs_model_logits_max_abs": lens_error, "vocab_size": int(right_all.shape[-1])}
    arrays = {"right_z": np.array([p["right"]["target_z"] for p in per_layer]),
              "wrong_z": np.array([p["wrong"]["target_z"] for p in per_layer])}
    return StudyOutput(results, [], arrays=arrays)


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    base = output.baseline
    files = []
    if r["kind"] == "masked":
        fig, axes = new_figure(1, 1, size=(7, 4))
        axes[0, 0].plot(a["right_z"], marker="o", label="right: whole MLM head")
        axes[0, 0].plot(a["wrong_z"], marker="s", label="wrong: decoder weights only")
        bound = extreme_z(r["vocab_size"])
        axes[0, 0].axhspan(-bound, bound, color="k", alpha=0.08, label="null: within the vocabulary's own extremes")
        if base is not None:
            axes[0, 0].plot(base.arrays["right_z"], color="grey", ls="--", label="right lens: random-init")
        axes[0, 0].set(title=f"z-score of {r['target']!r} at the mask", xlabel="hidden state", ylabel="z")
        axes[0, 0].legend()
        files.append((save(fig, folder, "z_scores", svg=True), "Masked-word z-score through the layers"))
        return files
    tokens = r["tokens"][:FIGURE_POSITIONS]
    grid = [row[:FIGURE_POSITIONS] for row in r["grid_top_tokens"]]
    n_states, n_pos = len(grid), len(tokens)
    fig, axes = new_figure(1, 1, size=(max(8, 0.9 * n_pos), max(5, 0.28 * n_states)))
    ax = axes[0, 0]
    im = ax.imshow(a["top_prob"][:, :n_pos], aspect="auto", origin="lower", cmap="Blues", vmin=0, vmax=1)
    for layer in range(n_states):
        for p in range(n_pos):
            dark = a["top_prob"][layer, p] > 0.6
            ax.text(p, layer, repr(grid[layer][p])[1:-1][:10], ha="center", va="center", fontsize=6,
                    color="white" if dark else "black")
    ax.set_xticks(range(n_pos), [repr(t)[1:-1] for t in tokens], rotation=60, fontsize=7)
    ax.set(ylabel="hidden state (0 = embeddings)", title="top prediction per layer and position (colour: its "
           "probability)")
    fig.colorbar(im, ax=ax, shrink=0.6)
    files.append((save(fig, folder, "grid"), f"Logit-lens grid (first {FIGURE_POSITIONS} positions at most)"))

    fig, axes = new_figure(1, 3, size=(15, 4))
    for p in range(n_pos):
        axes[0, 0].plot(a["final_rank"][:, p] + 1, lw=0.8)
        axes[0, 1].plot(a["final_prob"][:, p], lw=0.8)
    axes[0, 0].set(title="rank of the final prediction (+1)", xlabel="hidden state", yscale="log")
    axes[0, 1].set(title="probability of the final prediction", xlabel="hidden state")
    pl = r["per_layer"]
    axes[0, 2].plot([p["kl_to_final_mean"] for p in pl])
    axes[0, 2].set(title="KL(final || layer), mean over positions", xlabel="hidden state", yscale="log")
    files.append((save(fig, folder, "per_layer", svg=True), "How the final prediction emerges (one line per "
                  "position)"))

    fig, axes = new_figure(1, 1, size=(7, 4))
    ax = axes[0, 0]
    states = np.arange(len(pl))
    ax.plot(states, [p["final_log10_rank_mean"] for p in pl], marker="o", ms=3, label="this model")
    if "final_log10_rank_ci" in pl[0]:
        ci = np.array([p["final_log10_rank_ci"] for p in pl])
        ax.fill_between(states, ci[:, 0], ci[:, 1], alpha=0.3, label="95% bootstrap CI (positions)")
    ax.axhline(r["chance_log10_rank"], color="k", ls=":", label="chance: median rank V/2")
    if base is not None:
        bpl = base.results["per_layer"]
        ax.plot(np.arange(len(bpl)), [p["final_log10_rank_mean"] for p in bpl], color="grey", ls="--",
                label="random-init (its own final prediction)")
    ax.set(title="log10(rank + 1) of the final prediction, mean over positions", xlabel="hidden state")
    ax.legend(fontsize=7)
    files.append((save(fig, folder, "rank_curve", svg=True), "The final prediction's rank through depth, with the "
                  "chance level and the random-init copy"))
    return files
