// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// Signature recovery shared by the contracts: EIP-712 digests signed by an account, with
/// the malleable twin of every signature refused.
library Signatures {
    /// secp256k1n / 2: a signature with a higher s is the malleable twin of a low-s one.
    uint256 internal constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    /// The signer of `digest`, or the zero address for a malformed or high-s signature.
    function recover(bytes32 digest, bytes calldata sig) internal pure returns (address) {
        if (sig.length != 65) {
            return address(0);
        }
        bytes32 r = bytes32(sig[0:32]);
        bytes32 s = bytes32(sig[32:64]);
        uint8 v = uint8(sig[64]);
        if (uint256(s) > HALF_ORDER || (v != 27 && v != 28)) {
            return address(0);
        }
        return ecrecover(digest, v, r, s);
    }
}
