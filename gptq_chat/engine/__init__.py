"""Tensors only: the network, its GPTQ linears, sampling, the fast and plain engines, the scheduler, tensor parallel."""
