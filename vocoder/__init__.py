"""A standalone HiFi-GAN vocoder for kNN-VC features. It never imports knnvc."""
