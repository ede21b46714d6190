"""The distillation stream: epoch plans, image sources and teacher sources (issue 21)."""
