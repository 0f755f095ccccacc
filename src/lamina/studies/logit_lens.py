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
from ..stats import correlate
from .base import Claim, StudyOutput, register, scaled_layer

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
    """

    text: str = "The way you do anything is the way you do everything"
    word: str = "do"
    expected: str = "it"
    layer: int | None = None
    mask_word: str = "way"
    top_k: int = 5

    def __post_init__(self):
        if not self.text.strip() or not self.word.strip() or not self.mask_word.strip():
            raise LaminaError("text, word and mask_word must not be empty")
        if self.top_k < 1:
            raise LaminaError("top_k must be >= 1")


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
    sites = model.adapter.final_sites
    if "ln_final.hook_normalized" not in sites:
        raise LaminaError(f"the {model.arch} adapter names no final norm; the logit lens needs one")
    return model.module(sites["ln_final.hook_normalized"].module), model.module(sites["logits"].module)


def _causal(model, config: LogitLensConfig, text: str) -> StudyOutput:
    acts = capture(model, text, residual_sites(model) + ["logits"], cache=True)
    hidden = acts.residual_stream()  # (L + 1, T, d)
    final_norm, head = _lens_modules(model)
    n_states, n_tokens = hidden.shape[0], hidden.shape[1]
    model_logits = acts["logits"].double()
    final_ids = model_logits.argmax(-1)  # (T,)
    top_ids = np.zeros((n_states, n_tokens), dtype=np.int64)
    top_prob, final_rank, final_prob, kl = (np.zeros((n_states, n_tokens)) for _ in range(4))
    target_logp = torch.log_softmax(model_logits, -1)
    with torch.no_grad():
        for layer in range(n_states):
            logits = head(final_norm(hidden[layer].to(model.device, model.dtype))).double().cpu()
            if layer == n_states - 1:
                lens_error = float((logits - model_logits).abs().max())
            logp = torch.log_softmax(logits, -1)
            top_ids[layer] = logits.argmax(-1).numpy()
            top_prob[layer] = logp.max(-1).values.exp().numpy()
            own = logits.gather(1, final_ids[:, None])
            final_rank[layer] = (logits > own).sum(-1).numpy()
            final_prob[layer] = logp.gather(1, final_ids[:, None]).exp().squeeze(1).numpy()
            kl[layer] = (target_logp.exp() * (target_logp - logp)).sum(-1).numpy()
    L = n_states - 1
    early = config.layer if config.layer is not None else scaled_layer(3, 12, L)
    if not 0 <= early <= L:
        raise LaminaError(f"layer {early} does not exist; {model.name} has hidden states 0-{L}")
    tokens = list(acts.rows.token)
    word_pos = [int(p) for p in select.word(config.word)(_tokenized(model, text))]
    at_word = []
    for p in word_pos:
        with torch.no_grad():
            logits = head(final_norm(hidden[early, p:p + 1].to(model.device, model.dtype))).double().cpu()[0]
        top = torch.topk(logits, config.top_k).indices.tolist()
        at_word.append({"position": p, "token": tokens[p], "top_tokens": _decode(model, top),
                        "next_token": tokens[p + 1] if p + 1 < n_tokens else None})
    per_layer = [{"layer": layer, "final_rank_median": float(np.median(final_rank[layer])),
                  "final_prob_mean": float(final_prob[layer].mean()), "kl_to_final_mean": float(kl[layer].mean()),
                  "top_prob_mean": float(top_prob[layer].mean())} for layer in range(n_states)]
    results = {"kind": "causal", "text": text, "tokens": tokens, "layer": early,
               "final_predictions": _decode(model, final_ids.tolist()), "lens_vs_model_logits_max_abs": lens_error,
               "at_word": at_word, "grid_top_tokens": [_decode(model, row) for row in top_ids],
               "per_layer": per_layer}
    arrays = {"top_prob": top_prob, "final_rank": final_rank, "final_prob": final_prob, "kl": kl}
    return StudyOutput(results, _causal_claims(results, config, final_rank), arrays=arrays,
                       resolved={"layer": early})


def _tokenized(model, text: str):
    from ..capture import tokenize

    return tokenize(model, [text])[0]


def _causal_claims(r: dict, config: LogitLensConfig, final_rank: np.ndarray) -> list[dict]:
    layers = np.arange(final_rank.shape[0])
    rho = [correlate(layers, final_rank[:, t], "spearman").r for t in range(final_rank.shape[1])
           if np.ptp(final_rank[:, t]) > 0]
    first_top = []
    for t in range(final_rank.shape[1]):  # first layer from which the final token stays top-1
        zero = final_rank[:, t] == 0
        stays = np.flatnonzero([zero[i:].all() for i in range(len(zero))])
        first_top.append(int(stays[0]) / max(1, len(zero) - 1) if stays.size else 1.0)
    predicted = [w["top_tokens"][0] for w in r["at_word"]]
    want = config.expected.strip()
    return [
        Claim("The lens at the last layer is the model's own output", "identical logits",
              {"max_abs_difference": r["lens_vs_model_logits_max_abs"]}, r["lens_vs_model_logits_max_abs"] < 1e-3,
              source="lamina"),
        Claim("The final prediction emerges with depth: its rank falls through the layers", "rank falls",
              {"median_spearman_layer_vs_rank": float(np.median(rho)) if rho else None},
              None if not rho else float(np.median(rho)) < 0, source="lamina"),
        Claim("The final prediction settles only in the later layers", "top-1 from late layers on",
              {"mean_relative_depth_where_final_token_stays_top1": float(np.mean(first_top))},
              float(np.mean(first_top)) > 0.5, source="lamina"),
        Claim(f"At layer {r['layer']} the prediction after {config.word!r} is {want!r}",
              f"{want!r} (GPT-2, layer 3 of 12)", {"top_token_after_word": predicted},
              None if not predicted else any(p.strip() == want for p in predicted)),
    ]


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
    head = model.module(model.adapter.final_sites["logits"].module)
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
               "lens_vs_model_logits_max_abs": lens_error}
    arrays = {"right_z": np.array([p["right"]["target_z"] for p in per_layer]),
              "wrong_z": np.array([p["wrong"]["target_z"] for p in per_layer])}
    return StudyOutput(results, _masked_claims(results), arrays=arrays)


def _masked_claims(r: dict) -> list[dict]:
    pl = r["per_layer"]
    third = pl[-3] if len(pl) >= 3 else pl[0]
    return [
        Claim("The whole MLM head on the last hidden state is the model's own output", "identical logits",
              {"max_abs_difference": r["lens_vs_model_logits_max_abs"]}, r["lens_vs_model_logits_max_abs"] < 1e-3,
              source="lamina"),
        Claim("At the third-to-last hidden state the right lens (whole MLM head) finds the masked word; the wrong "
              "lens (decoder weights only) does not", "right z ~ 30, wrong z < 3",
              {"layer": third["layer"], "right_z": third["right"]["target_z"],
               "wrong_z": third["wrong"]["target_z"], "right_top": third["right"]["top_token"],
               "wrong_top": third["wrong"]["top_token"]},
              third["right"]["target_z"] > 10 and third["wrong"]["target_z"] < 3),
    ]


def figures(output: StudyOutput, folder) -> list[tuple[str, str]]:
    from ..report.figures import new_figure, save

    r, a = output.results, output.arrays
    files = []
    if r["kind"] == "masked":
        fig, axes = new_figure(1, 1, size=(7, 4))
        axes[0, 0].plot(a["right_z"], marker="o", label="right: whole MLM head")
        axes[0, 0].plot(a["wrong_z"], marker="s", label="wrong: decoder weights only")
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
    return files
