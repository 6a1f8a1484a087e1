"""Sans-IO Sandesh binary codec for the vRouter's vr.sandesh schema."""
