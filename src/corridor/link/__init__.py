"""The QKD link model: decoy-state BB84 over fibre, closed form and Monte Carlo."""
