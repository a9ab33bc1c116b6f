/// The version `viewportd --version` prints.
public let viewportdVersion = "0.1.0"
