from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM
from keras_infmemory.models.sorting import (
    SORTING_PRESETS,
    sorting_compile_arguments,
    sorting_transformer,
)

__all__ = [
    "ARMS",
    "SORTING_PRESETS",
    "InfFormerLM",
    "sorting_compile_arguments",
    "sorting_transformer",
]
