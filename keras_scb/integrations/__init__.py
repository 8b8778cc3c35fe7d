"""SCB on other libraries' anchor-based detectors, one module per library.

Each module needs its library, an optional extra (``pip install -e '.[keras-hub]'``
for `keras_scb.integrations.keras_hub`); importing this package imports none.
"""
