Feature: VRAM-only policy
  Model bytes live in device memory and nowhere else: integrated GPUs, pageable memory access,
  and managed, pinned, zero-copy or plain host allocations are refused.

  Scenario: Enforce VRAM-only policy at initialization
    Given a VRAM manager with 10 MiB of capacity
    When I enforce the VRAM-only policy
    Then the policy holds
    And no audit event is recorded

  Scenario Outline: RAM-backed allocations are refused
    Given a VRAM manager with 10 MiB of capacity
    And the next allocation is <kind> memory
    And a model of 1 MiB
    When I seal the model
    Then the seal fails with PolicyViolation
    And a critical audit event PolicyViolation is recorded
    And 0 MiB of VRAM is used

    Examples:
      | kind        |
      | managed     |
      | pinned      |
      | zero-copy   |
      | unregistered |

  Scenario: Detect policy violation
    Given a VRAM manager on an integrated GPU with unified memory
    When I enforce the VRAM-only policy
    Then the policy is violated
    And a critical audit event PolicyViolation is recorded
    And the worker is stopped

  Scenario: Attest that a shard is resident
    Given a VRAM manager with 10 MiB of capacity
    And a sealed model of 1 MiB
    When I request an attestation with nonce "ready-1"
    Then the attestation verifies with nonce "ready-1" and not with "ready-2"
    And the attestation says the memory is simulated
