"""Training: the loop shared by dense training, the search and finetuning (``loop``), the data behind one
interface (``data``), distillation and the recipes each stage starts from."""
