"""The demo inputs: generated raw partitions (images, texts) and small pre-trained hub modules, made by ``make``
or by hand; no spark-submit application imports them."""
