// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import "./Signatures.sol";

/// The part of the staking contract the ticket broker asks about.
interface IStaking {
    function activeSince(address orchestrator) external view returns (uint256);
    function maxActive() external view returns (uint256);
}

/// Probabilistic micropayments. A broadcaster (sender) funds a deposit and a reserve in ETH and
/// signs a ticket per payment; a ticket wins when keccak256(signature, recipientRand) is below
/// its win probability, and only winners are redeemed here, for their face value.
///
/// A winning ticket is paid from the sender's deposit, whatever its recipient. What the deposit
/// cannot cover is paid from the sender's reserve, as Livepeer's reserve, in rounds of
/// `roundLength` seconds: in a round, only a recipient that has been in the staking contract's
/// active set since before the round began may take from the reserve, and at most
/// `base / maxActive`, where `base` is the sender's reserve at the round's first claim. As the
/// active set never holds more than `maxActive`, the claims of one round never exceed the base,
/// and swapping recipients in and out of the set within a round gains nothing: each eligible
/// recipient, an honest orchestrator included, can count on its share whatever recipients the
/// sender controls.
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
        /// What is left of the reserve.
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

    uint256 public immutable unlockPeriod;
    IStaking public immutable staking;
    mapping(address => Sender) private senders;
    mapping(bytes32 => bool) public usedTickets;
    /// Seconds per round of reserve allocation.
    uint256 public immutable roundLength;
    /// Each sender's reserve at the first claim of a round (plus one: 0 means no claim yet).
    mapping(address => mapping(uint256 => uint256)) private reserveBase;
    /// What each recipient has taken from a sender's reserve, per round.
    mapping(address => mapping(uint256 => mapping(address => uint256))) private reserveClaimed;

    event DepositFunded(address indexed sender, uint256 amount, uint256 deposit);
    event ReserveFunded(address indexed sender, uint256 amount, uint256 reserve);
    event Unlocked(address indexed sender, uint256 withdrawableAt);
    event Withdrawn(address indexed sender, uint256 deposit, uint256 reserve);
    event ReserveClaimed(address indexed sender, address indexed recipient, uint256 amount);
    event WinningTicketRedeemed(
        address indexed sender,
        address indexed recipient,
        bytes32 indexed ticketHash,
        uint256 faceValue,
        uint256 paid,
        uint256 senderNonce
    );

    constructor(uint256 unlockPeriod_, address staking_, uint256 roundLength_) {
        require(staking_ != address(0), "the broker needs the staking contract");
        require(roundLength_ > 0, "rounds need a length");
        unlockPeriod = unlockPeriod_;
        roundLength = roundLength_;
        staking = IStaking(staking_);
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

    /// The current round.
    function currentRound() public view returns (uint256) {
        return block.timestamp / roundLength;
    }

    /// How much `recipient` may still take from `sender`'s reserve in this round: nothing
    /// unless it has been in the active set since before the round began, else its share of
    /// the round's base (`base / maxActive`) less what it took, at most what is left.
    function claimableReserve(address sender, address recipient) public view returns (uint256) {
        Sender storage s = senders[sender];
        uint256 round = currentRound();
        uint256 since = staking.activeSince(recipient);
        if (s.reserve == 0 || since == 0 || since >= round * roundLength) {
            return 0;
        }
        uint256 base = reserveBase[sender][round];
        base = base == 0 ? s.reserve : base - 1;
        uint256 share = base / staking.maxActive();
        uint256 claimed = reserveClaimed[sender][round][recipient];
        if (claimed >= share) {
            return 0;
        }
        uint256 left = share - claimed;
        return left < s.reserve ? left : s.reserve;
    }

    /// Take up to `faceValue` from `sender` for `recipient`: from the deposit, then from the
    /// recipient's share of the reserve. Returns what was taken.
    function debit(address sender, address recipient, uint256 faceValue) private returns (uint256) {
        Sender storage s = senders[sender];
        uint256 fromDeposit = faceValue < s.deposit ? faceValue : s.deposit;
        s.deposit -= fromDeposit;
        if (fromDeposit == faceValue) {
            return fromDeposit;
        }
        uint256 fromReserve = claimableReserve(sender, recipient);
        if (fromReserve > faceValue - fromDeposit) {
            fromReserve = faceValue - fromDeposit;
        }
        if (fromReserve > 0) {
            uint256 round = currentRound();
            if (reserveBase[sender][round] == 0) {
                reserveBase[sender][round] = s.reserve + 1;
            }
            s.reserve -= fromReserve;
            reserveClaimed[sender][round][recipient] += fromReserve;
            emit ReserveClaimed(sender, recipient, fromReserve);
        }
        return fromDeposit + fromReserve;
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
        return Signatures.recover(digest, sig);
    }

    function isWinningTicket(bytes calldata sig, uint256 recipientRand, uint256 winProb) public pure returns (bool) {
        return uint256(keccak256(abi.encodePacked(sig, recipientRand))) < winProb;
    }

    /// Pay a winning ticket: from the sender's deposit, then what the deposit lacks from the
    /// recipient's share of the sender's reserve (see `claimableReserve`). A ticket paid in part
    /// is used up; one that would pay nothing reverts and stays redeemable until it expires.
    function redeemWinningTicket(Ticket calldata t, bytes calldata sig, uint256 recipientRand) external {
        require(t.recipient != address(0), "ticket has no recipient");
        require(t.faceValue > 0, "ticket has no face value");
        require(block.timestamp <= t.expiresAt, "ticket is expired");
        require(keccak256(abi.encodePacked(recipientRand)) == t.recipientRandHash, "recipientRand does not match");
        bytes32 digest = ticketHash(t);
        require(!usedTickets[digest], "ticket is already used");
        address signer = recoverSigner(digest, sig);
        require(signer != address(0) && signer == t.sender, "signature is not the sender's");
        require(isWinningTicket(sig, recipientRand, t.winProb), "ticket did not win");
        uint256 paid = debit(t.sender, t.recipient, t.faceValue);
        require(paid > 0, "sender has no funds for this ticket");
        usedTickets[digest] = true;
        (bool ok,) = t.recipient.call{value: paid}("");
        require(ok, "payout failed");
        emit WinningTicketRedeemed(t.sender, t.recipient, digest, t.faceValue, paid, t.senderNonce);
    }
}
