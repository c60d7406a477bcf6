"""Encoders: patch (image → feature), slide (bag of patch features → embedding), molecular."""
