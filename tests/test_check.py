"""``lamina check`` / ``Model.check()``: every check passes on a correct adapter and fails on a broken one; the
outcome is remembered per model hash; the generic fallback accepts a model only when its self-check passes;
unsupported kinds and unknown names fail in one line."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch

import lamina
from lamina import LaminaError
from lamina.capture import adapters
from lamina.capture.adapters import ArchAdapter, HookPoint, adapter_for_config, family
from lamina.capture.check import CheckReport, check_model, ensure_checked
from lamina.cli import main


def _with(model, **changes):
    """The same model read through a modified adapter (the HF module is shared, never changed)."""
    return dataclasses.replace(model, adapter=dataclasses.replace(model.adapter, **changes), _widths=None)


def _status(report: CheckReport) -> dict:
    return {r.name: r.passed for r in report.results}


def test_report_table_and_dict(tiny_models):
    report = tiny_models["llama"].check()
    assert report.passed and isinstance(report, CheckReport)
    table = report.table()
    for name in ("hooks leave logits bit-identical", "resid_pre[l] == HF hidden_states[l]",
                 "resid_post == resid_pre + attn_out + mlp_out", "left-padded batch == one text at a time",
                 "q/k/v widths == heads x d_head"):
        assert name in table
    assert json.loads(json.dumps(report.as_dict()))["passed"] is True


def test_wrong_attn_out_breaks_the_identity(tiny_models):
    model = _with(tiny_models["llama"], attn_out="self_attn.q_proj")  # same width, wrong quantity
    status = _status(check_model(model))
    assert status["resid_post == resid_pre + attn_out + mlp_out"] is False
    assert status["hooks leave logits bit-identical"] is True


def test_position_bug_breaks_left_padding(tiny_models):
    # Not passing position ids to a model with learned positions: HF counts them from the first (pad) column.
    status = _status(check_model(_with(tiny_models["gpt2"], position_ids=False)))
    assert status["left-padded batch == one text at a time"] is False
    assert status["right-padded batch == one text at a time"] is True


def test_missing_final_norm_breaks_last_hidden_state(tiny_models):
    status = _status(check_model(_with(tiny_models["gpt2"], final_norm=None)))
    assert status["HF last hidden state"] is False
    assert status["resid_pre[l] == HF hidden_states[l]"] is True


def test_wrong_head_count_breaks_widths(tiny_models):
    status = _status(check_model(_with(tiny_models["llama"], kv_heads=lambda config: 4)))  # it has 2
    assert status["q/k/v widths == heads x d_head"] is False


def test_a_hook_that_writes_is_caught(tiny_models):
    model = tiny_models["gpt2"]
    doubling = HookPoint("transformer.h.{l}.mlp.c_fc", part=lambda config: lambda t: t.mul_(2))  # in place
    broken = _with(model)
    broken.adapter.block_sites["mlp.hook_pre"] = doubling  # this adapter copy only
    enc = model.tokenizer("A short one.", return_tensors="pt")
    with torch.no_grad():
        before = model.hf(**enc).logits
        assert _status(check_model(broken))["hooks leave logits bit-identical"] is False
        assert torch.equal(model.hf(**enc).logits, before)  # the writing hook is gone with the check


def test_ensure_checked_runs_once(tiny_models, cache_dir, monkeypatch):
    model = tiny_models["gpt2"]
    first = ensure_checked(model)
    assert first["passed"] and first["cached"] is False
    files = list((cache_dir / "checks").iterdir())
    assert [f.name for f in files] == [f"{first['key']}.json"]  # one entry, no temporary files left
    monkeypatch.setattr("lamina.capture.check.check_model", lambda *a: pytest.fail("checked twice"))
    again = ensure_checked(model)
    assert again["cached"] is True and again["checks"] == first["checks"]


def test_cli_check_exit_status(tiny_paths, capsys, monkeypatch):
    assert main(["check", str(tiny_paths["gpt-neox"])]) == 0
    assert "all checks passed" in capsys.readouterr().out
    broken = dataclasses.replace(adapters.GPT_NEOX, attn_out="mlp.dense_4h_to_h")  # same width, wrong
    monkeypatch.setitem(adapters.ADAPTERS, "gpt-neox", broken)
    assert main(["check", str(tiny_paths["gpt-neox"]), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_unsupported_kinds_are_one_line():
    from transformers import MambaConfig, T5Config

    cases = {"encoder-decoder": T5Config(), "state-space": MambaConfig(),
             "multimodal": types.SimpleNamespace(model_type="llava", text_config=object())}
    for words, config in cases.items():
        with pytest.raises(LaminaError, match=words) as info:
            adapter_for_config(config)
        assert "\n" not in str(info.value) and "supported: gpt2" in str(info.value)


def test_unknown_adapter_field_lists_valid_ones():
    with pytest.raises(LaminaError, match="unknown adapter field.*atn_out.*valid:.*attn_out"):
        family("mine", "mine", atn_out="self_attn.o_proj")
    mine = family("mine", "mine", like=adapters.LLAMA, mlp_pre="mlp.c_fc", mlp_pre_linear=None)
    assert isinstance(mine, ArchAdapter) and mine.blocks == "model.layers" and not mine.gated_mlp


def test_renamed_and_absent_sites_explain_themselves(tiny_models):
    with pytest.raises(LaminaError, match="renamed ln_final.hook_out"):
        tiny_models["llama"].sites("ln_final.hook_normalized")
    with pytest.raises(LaminaError, match="not gated"):
        tiny_models["gpt2"].sites("blocks.*.mlp.hook_pre_linear")
    torch.testing.assert_close(  # hook_out is the final norm's output: HF's last hidden state
        lamina.capture(tiny_models["llama"], "A short one.", "ln_final.hook_out")["ln_final.hook_out"],
        tiny_models["llama"].hf(**tiny_models["llama"].tokenizer("A short one.", return_tensors="pt"),
                                output_hidden_states=True).hidden_states[-1][0].detach(), atol=1e-6, rtol=0)


def _save_tiny(model_type, path, tokenizer, **overrides):
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    config = CONFIG_MAPPING[model_type](
        vocab_size=len(tokenizer), num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=512, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        **overrides)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_generic_fallback_accepts_a_llama_like_type(tmp_path, tokenizers, cache_dir):
    # SmolLM3 has no adapter: its sites are found by structure and names, then verified.
    assert "smollm3" not in adapters.supported_model_types()
    model = lamina.load_model(_save_tiny("smollm3", tmp_path / "s", tokenizers["bpe"]))
    assert model.adapter.discovered and model.arch == "generic:smollm3"
    assert model.adapter.attn_out == "self_attn.o_proj" and model.adapter.gated_mlp
    assert model.check().passed
    assert len(list((cache_dir / "checks").iterdir())) == 1  # the acceptance check is remembered


def test_generic_fallback_rejects_a_failed_check(tmp_path, tokenizers, cache_dir):
    # Granite scales each sublayer's output before the residual add: o_proj's output is not what is added.
    with pytest.raises(LaminaError, match="failed its self-check: resid_post == resid_pre") as info:
        lamina.load_model(_save_tiny("granite", tmp_path / "g", tokenizers["bpe"], residual_multiplier=0.5))
    assert "\n" not in str(info.value)


def test_generic_fallback_names_what_is_missing(tmp_path, tokenizers, cache_dir):
    from transformers import CodeGenConfig, CodeGenForCausalLM

    tok = tokenizers["bpe"]
    config = CodeGenConfig(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_positions=512,
                           bos_token_id=0, eos_token_id=0)
    CodeGenForCausalLM(config).save_pretrained(tmp_path / "c")
    tok.save_pretrained(tmp_path / "c")
    with pytest.raises(LaminaError, match=r"found blocks=transformer.h.*but not: separate q/k/v.*qkv_proj") as info:
        lamina.load_model(tmp_path / "c")
    assert "\n" not in str(info.value)
