Feature: Seal a model into VRAM
  A worker seals a model's bytes into GPU memory: the shard gets a digest and a seal, the
  capacity is accounted to the 2 MiB allocation granularity, and bad input changes nothing.

  Background:
    Given a VRAM manager with 10 MiB of capacity

  Scenario: Successfully seal model in VRAM
    Given a model of 1 MiB
    And the shard id "llama-shard-0"
    When I seal the model
    Then the seal succeeds
    And the shard has the model's size on device 0
    And the shard's digest is the SHA-256 tree digest of the model
    And an audit event VramSealed is recorded
    And 2 MiB of VRAM is used

  Scenario: Accept model at exact capacity
    Given a model of 10 MiB
    When I seal the model
    Then the seal succeeds
    And 0 MiB of VRAM is available

  Scenario: Reject path traversal in shard_id
    Given a model of 1 MiB
    And the shard id "../etc/passwd"
    When I seal the model
    Then the seal fails with InvalidInput
    And no audit event is recorded
    And 0 MiB of VRAM is used

  Scenario: Reject null byte in shard_id
    Given a model of 1 MiB
    And a shard id with a null byte
    When I seal the model
    Then the seal fails with InvalidInput
    And no audit event is recorded

  Scenario: Fail on insufficient VRAM
    Given a model of 12 MiB
    When I seal the model
    Then the seal fails with InsufficientVram
    And the error shows 12582912 bytes needed and 10485760 bytes available
    And 0 MiB of VRAM is used

  Scenario: Reject oversized model
    When a 100000000001-byte model is checked against the default maximum
    Then it is rejected with InvalidInput
    Given the maximum model size is 1 MiB
    And a model of 2 MiB
    When I seal the model
    Then the seal fails with InvalidInput
    And no audit event is recorded

  Scenario: The same shard id cannot be sealed twice while live
    Given a sealed model of 1 MiB with id "dup"
    And a model of 1 MiB
    And the shard id "dup"
    When I seal the model
    Then the seal fails with AlreadySealed
