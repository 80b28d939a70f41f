"""NetLLM-style network policies: a frozen pretrained LM adapted with LoRA.

Pure model code: it imports nothing from the rest of the project, so it can be
used (and trained) on its own.
"""
