"""Hardware targets: chip specs with their sources, and calibration of the local machine.

Filled in by the hardware issue; the package exists so the layout is in place.
"""
