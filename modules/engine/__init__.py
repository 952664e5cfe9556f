"""The engine: checkpoints to images. Knows no UI, no HTTP and no app settings; configuration comes as arguments."""
