"""`python -m keras_convmixer` is the `keras-convmixer` command."""

from keras_convmixer.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
