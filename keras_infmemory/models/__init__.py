from keras_infmemory.models.inf_former_lm import ARMS, InfFormerLM

__all__ = ["ARMS", "InfFormerLM"]
