"""Inference from a saved run: the predictor (checkpoint -> model + eval preprocessing ->
classes, `predictor`) and the self-contained exported function (`export`)."""
