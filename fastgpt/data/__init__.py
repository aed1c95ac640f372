"""Data: text sources, preparation into cached token files, and the batch loader.

``sources`` (names -> documents) -> ``prepare`` (documents -> token files) -> ``loader`` (batches).
"""

from fastgpt.config import DataConfig
from fastgpt.data.loader import MODES, TokenLoader
from fastgpt.data.prepare import PreparedData, prepare_data
from fastgpt.data.sources import load_documents

__all__ = ["MODES", "DataConfig", "PreparedData", "TokenLoader", "load_documents", "prepare_data"]
