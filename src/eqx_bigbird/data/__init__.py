"""Datasets: Long Range Arena's ListOps (`eqx_bigbird.data.listops`)."""

from . import listops as listops
