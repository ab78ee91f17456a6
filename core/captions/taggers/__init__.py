"""Automatic captioning: WD14 tags (wd14.py) and BLIP sentences (blip.py), written with core.captions.files."""
