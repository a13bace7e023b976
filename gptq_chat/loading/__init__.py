"""From a checkpoint folder to a model on the cards: checks, kernel, memory plan, placement, the loader, the holder."""
