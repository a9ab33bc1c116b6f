// The fan-out benchmark comes in the next commit.
