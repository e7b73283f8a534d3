"""Point-cloud feature probing: Sonata/PTv3 and SparseUNet encoders, pre-training, lifting, ScanNet."""
