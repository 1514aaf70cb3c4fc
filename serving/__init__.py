"""Serving models to runners: our OpenAI-compatible model server and the llama.cpp and vLLM launchers."""
