"""Corpus adapters behind one registry: `get_adapter("ravdess")`, `ADAPTERS`."""

from __future__ import annotations

from pallm.corpora import expresso, iemocap, manifest, ravdess, synthetic
from pallm.corpora.base import CorpusAdapter, CorpusError, ItemError, Quarantined

ADAPTERS: dict[str, CorpusAdapter] = {
    a.name: a for a in (ravdess.ADAPTER, iemocap.ADAPTER, expresso.ADAPTER, manifest.ADAPTER, synthetic.ADAPTER)
}


def get_adapter(name: str) -> CorpusAdapter:
    """The adapter registered under `name`; CorpusError lists the known names otherwise."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise CorpusError(f"unknown corpus {name!r}; known corpora: {', '.join(sorted(ADAPTERS))}") from None


__all__ = ["ADAPTERS", "CorpusAdapter", "CorpusError", "ItemError", "Quarantined", "get_adapter"]
