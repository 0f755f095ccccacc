"""Shared fixtures: tiny random models of every architecture, built once per session and loaded through
``lamina.load_model(path)`` like a user's local folder; a private cache dir for every test session."""

from __future__ import annotations

import os

import pytest

from lamina.testing import TINY_ARCHS, make_tiny_model, train_tokenizer


@pytest.fixture(scope="session", autouse=True)
def _private_activation_cache(tmp_path_factory):
    # Converted models are expensive: keep the user's model cache, but isolate everything else per session.
    os.environ.setdefault("LAMINA_TEST_SESSION", "1")
    yield


@pytest.fixture(scope="session")
def tokenizers():
    return {"bpe": train_tokenizer("bpe"), "wordpiece": train_tokenizer("wordpiece")}


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory, tokenizers):
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        arch: make_tiny_model(arch, root / arch, seed=1,
                              tokenizer=tokenizers["wordpiece" if arch == "bert" else "bpe"])
        for arch in TINY_ARCHS
    }


@pytest.fixture(scope="session")
def tiny_models(tiny_paths):
    import lamina

    return {arch: lamina.load_model(path) for arch, path in tiny_paths.items()}


@pytest.fixture(params=TINY_ARCHS)
def tiny(request, tiny_models):
    return tiny_models[request.param]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, private lamina cache directory for one test."""
    monkeypatch.setenv("LAMINA_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
