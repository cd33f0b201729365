"""The data layer: prompt datasets of the paper's schema, and the control memories' word pools.

Example::

    from meminject.config import load_run_config
    from meminject.data import load_dataset
    dataset = load_dataset(load_run_config(["data=demo"]).data)
    print(len(dataset), list(dataset.frame.columns)[:2])   # 40 ['explicit_sentence', 'obscure_sentence']
"""

from ._dataset import (
    REQUIRED_COLUMNS,
    Dataset,
    FileRef,
    load_dataset,
    read_prompt_csv,
    resolve_data_file,
    split_part,
    split_rows,
)
from ._lexicon import lexicon_pools, lexicon_versions

__all__ = [
    "REQUIRED_COLUMNS",
    "Dataset",
    "FileRef",
    "load_dataset",
    "read_prompt_csv",
    "resolve_data_file",
    "split_part",
    "split_rows",
    "lexicon_pools",
    "lexicon_versions",
]
