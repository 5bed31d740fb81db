"""The Dask worker plugin that owns each worker's residents (`pallm.resident`) for the length of a build."""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

from pallm.resident import PLUGIN_NAME, Residents


class ResidentsPlugin(WorkerPlugin):
    """Holds the stage workers of one Dask worker from registration to teardown, which frees their models."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.residents: Residents | None = None  # made on the worker: the plugin travels there pickled

    def setup(self, worker: Any) -> None:
        self.residents = Residents()

    def teardown(self, worker: Any) -> None:
        if self.residents is not None:
            self.residents.release()
