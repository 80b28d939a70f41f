"""NetLLM-style network policies: a frozen pretrained LM adapted with LoRA.

Pure model code: it imports nothing from the rest of the project, so it can be
used (and trained) on its own.

Data flow: ``pool`` (decisions.parquet -> experience pool) -> ``train`` (adapt:
LoRA + decision transformer -> checkpoint) -> ``inference`` (``LlmDecider``, the
API the agent process calls). ``backbone`` loads LMs from local directories,
``features`` turns named observation fields into scaled state tokens, ``policy``
holds the model and its KV-cached decision session. CLI: ``python -m llm``.
"""
