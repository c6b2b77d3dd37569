"""Testbeds for the benchmarks: closed-form and small trained models to drive and score the samplers.

Submodules are imported on demand (``from skipstep.testbeds.digits import load_digits_unet``) so that
importing this package stays cheap.
"""
