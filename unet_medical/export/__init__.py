"""Export stage: deployable files (formats), their parity with the trained model (parity) and the
model card written beside them (model_card)."""
