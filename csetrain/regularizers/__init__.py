"""Regularizers: terms addable to any objective (`regularizer=[name,...]`), each returning its
own weighted loss from the step's embedded views."""
