// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// Probabilistic micropayments. A broadcaster (sender) funds a deposit and a reserve in ETH and
/// signs a ticket per payment; a ticket wins when keccak256(signature, recipientRand) is below
/// its win probability, and only winners are redeemed here, for their face value.
contract TicketBroker {
    struct Ticket {
        address recipient;
        address sender;
        uint256 faceValue;
        uint256 winProb;
        uint256 senderNonce;
        bytes32 recipientRandHash;
        uint256 expiresAt;
    }

    struct Sender {
        uint256 deposit;
        uint256 reserve;
        uint256 withdrawableAt;
    }

    bytes32 public constant TICKET_TYPEHASH = keccak256(
        "Ticket(address recipient,address sender,uint256 faceValue,uint256 winProb,uint256 senderNonce,bytes32 recipientRandHash,uint256 expiresAt)"
    );
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("Castwork TicketBroker");
    bytes32 private constant VERSION_HASH = keccak256("1");
    /// secp256k1n / 2: a signature with a higher s is the malleable twin of a low-s one.
    uint256 private constant HALF_ORDER = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    uint256 public immutable unlockPeriod;
    mapping(address => Sender) private senders;
    mapping(bytes32 => bool) public usedTickets;

    event DepositFunded(address indexed sender, uint256 amount, uint256 deposit);
    event ReserveFunded(address indexed sender, uint256 amount, uint256 reserve);
    event Unlocked(address indexed sender, uint256 withdrawableAt);
    event Withdrawn(address indexed sender, uint256 deposit, uint256 reserve);
    event WinningTicketRedeemed(
        address indexed sender,
        address indexed recipient,
        bytes32 indexed ticketHash,
        uint256 faceValue,
        uint256 paid,
        uint256 senderNonce
    );

    constructor(uint256 unlockPeriod_) {
        unlockPeriod = unlockPeriod_;
    }

    function fundDeposit() external payable {
        Sender storage s = senders[msg.sender];
        s.deposit += msg.value;
        s.withdrawableAt = 0;
        emit DepositFunded(msg.sender, msg.value, s.deposit);
    }

    function fundReserve() external payable {
        Sender storage s = senders[msg.sender];
        s.reserve += msg.value;
        s.withdrawableAt = 0;
        emit ReserveFunded(msg.sender, msg.value, s.reserve);
    }

    function fundDepositAndReserve(uint256 depositAmount, uint256 reserveAmount) external payable {
        require(msg.value == depositAmount + reserveAmount, "value must equal deposit plus reserve");
        Sender storage s = senders[msg.sender];
        s.deposit += depositAmount;
        s.reserve += reserveAmount;
        s.withdrawableAt = 0;
        emit DepositFunded(msg.sender, depositAmount, s.deposit);
        emit ReserveFunded(msg.sender, reserveAmount, s.reserve);
    }

    /// Start the unlock period after which the sender may withdraw; tickets stay redeemable.
    function unlock() external {
        Sender storage s = senders[msg.sender];
        require(s.deposit + s.reserve > 0, "nothing to unlock");
        s.withdrawableAt = block.timestamp + unlockPeriod;
        emit Unlocked(msg.sender, s.withdrawableAt);
    }

    function withdraw() external {
        Sender storage s = senders[msg.sender];
        require(s.withdrawableAt != 0 && s.withdrawableAt <= block.timestamp, "unlock period has not passed");
        uint256 deposit = s.deposit;
        uint256 reserve = s.reserve;
        delete senders[msg.sender];
        (bool ok,) = msg.sender.call{value: deposit + reserve}("");
        require(ok, "payout failed");
        emit Withdrawn(msg.sender, deposit, reserve);
    }

    function getSenderInfo(address sender)
        external
        view
        returns (uint256 deposit, uint256 reserve, uint256 withdrawableAt)
    {
        Sender storage s = senders[sender];
        return (s.deposit, s.reserve, s.withdrawableAt);
    }

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// The EIP-712 digest a sender signs for a ticket.
    function ticketHash(Ticket calldata t) public view returns (bytes32) {
        bytes32 structHash = keccak256(
            abi.encode(
                TICKET_TYPEHASH,
                t.recipient,
                t.sender,
                t.faceValue,
                t.winProb,
                t.senderNonce,
                t.recipientRandHash,
                t.expiresAt
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// The signer of `digest`, or the zero address for a malformed or high-s signature.
    function recoverSigner(bytes32 digest, bytes calldata sig) public pure returns (address) {
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

    function isWinningTicket(bytes calldata sig, uint256 recipientRand, uint256 winProb) public pure returns (bool) {
        return uint256(keccak256(abi.encodePacked(sig, recipientRand))) < winProb;
    }

    function redeemWinningTicket(Ticket calldata t, bytes calldata sig, uint256 recipientRand) external {
        require(t.recipient != address(0), "ticket has no recipient");
        require(block.timestamp <= t.expiresAt, "ticket is expired");
        require(keccak256(abi.encodePacked(recipientRand)) == t.recipientRandHash, "recipientRand does not match");
        bytes32 digest = ticketHash(t);
        require(!usedTickets[digest], "ticket is already used");
        address signer = recoverSigner(digest, sig);
        require(signer != address(0) && signer == t.sender, "signature is not the sender's");
        require(isWinningTicket(sig, recipientRand, t.winProb), "ticket did not win");
        usedTickets[digest] = true;

        Sender storage s = senders[t.sender];
        uint256 paid = t.faceValue;
        if (paid <= s.deposit) {
            s.deposit -= paid;
        } else {
            uint256 fromReserve = paid - s.deposit;
            if (fromReserve > s.reserve) {
                fromReserve = s.reserve;
            }
            paid = s.deposit + fromReserve;
            s.deposit = 0;
            s.reserve -= fromReserve;
        }
        if (paid > 0) {
            (bool ok,) = t.recipient.call{value: paid}("");
            require(ok, "payout failed");
        }
        emit WinningTicketRedeemed(t.sender, t.recipient, digest, t.faceValue, paid, t.senderNonce);
    }
}
