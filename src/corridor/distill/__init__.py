"""Key distillation: detection records -> identical, provably secret key blocks."""
