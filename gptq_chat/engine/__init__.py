"""Tensors only: the model's shape, the network, GPTQ linears, sampling, the engines (one or more GPUs), scheduling."""
