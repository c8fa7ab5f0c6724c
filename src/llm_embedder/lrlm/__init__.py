"""Long-range language modelling on source code: record builder, scoring by token ids, LM-metric evaluation."""
