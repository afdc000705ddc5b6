"""The hardware abstraction: the only code that touches pins or SPI.

- ``board``: the typed board the loop drives (cut, enable, set current, threshold, kick, sample,
  inputs), built over ``lines`` (gpiozero devices, fail-safe defaults) and ``chips`` (MCP4922 DAC,
  MCP3208 ADC) on a ``bus`` (py-spidev, or the simulated bus);
- ``sim``: the simulated board below the bus (byte-exact chips, a plant, fault injection), so the
  tests, the demo and the bench run the same code as the Pi.
"""
