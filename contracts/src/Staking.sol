// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

import "./Signatures.sol";

interface IERC20 {
    function transfer(address to, uint256 amount) external returns (bool);
    function transferFrom(address from, address to, uint256 amount) external returns (bool);
    function burn(uint256 amount) external;
}

/// Orchestrators bond stake, register a price, and form an active set by stake.
/// Accounts with the verifier role may slash an orchestrator's stake, its bonded stake first,
/// then its unbonding stake that is not withdrawn yet; but only for a rendition of a claim
/// the orchestrator signed (EIP-712: stream, segment, rendition hashes, fee), and only when
/// `slashQuorum` verifiers vote for it within `slashWindow` seconds of its proposal. The
/// proposal, with the evidence's hash, is on-chain from the first vote: the orchestrator
/// sees it before the slash lands.
/// Only orchestrators with bonded stake are registered, and at most `maxActive` of them: the
/// registered orchestrators are the active set (as Livepeer's transcoder pool). When it is
/// full, a newcomer joins only with more bonded stake than the smallest member, which it
/// evicts. One whose stake falls to zero is deregistered, and must bond again before it
/// registers again. So the set stays bounded and `isActive` costs one storage read.
contract Staking {
    struct Orchestrator {
        uint256 bonded;
        uint256 pricePerUnit;
        uint256 pixelsPerUnit;
        string serviceUri;
        bool registered;
        /// When it last joined the active set.
        uint256 registeredAt;
    }

    struct Unbonding {
        uint256 amount;
        uint256 withdrawableAt;
    }

    /// A slash proposal: one rendition of one signed claim.
    struct Proposal {
        address orchestrator;
        uint256 amount;
        /// Votes are taken until then (0: no such proposal).
        uint256 deadline;
        uint256 votes;
        bool executed;
        bytes32 evidenceHash;
    }

    /// What an orchestrator signs for each segment it returns: the stream (keccak256 of its
    /// name), the segment, keccak256 of its renditions' SHA-256 hashes in ladder order, and
    /// the fee charged for it (wei).
    struct Claim {
        address orchestrator;
        bytes32 stream;
        uint256 seq;
        bytes32 renditions;
        uint256 fee;
    }

    bytes32 public constant CLAIM_TYPEHASH =
        keccak256("Claim(address orchestrator,bytes32 stream,uint256 seq,bytes32 renditions,uint256 fee)");
    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("Castwork Staking");
    bytes32 private constant VERSION_HASH = keccak256("1");

    IERC20 public immutable token;
    address public immutable owner;
    uint256 public immutable unbondingPeriod;
    uint256 public immutable maxActive;
    /// Verifier votes a slash needs (at least 2: no single key slashes).
    uint256 public immutable slashQuorum;
    /// Seconds after a proposal during which its votes count.
    uint256 public immutable slashWindow;

    mapping(address => Orchestrator) private orchestrators;
    /// One unbonding lock per orchestrator: a loop over many small locks could make a slash
    /// run out of gas, so each unbond adds to the lock and restarts its period.
    mapping(address => Unbonding) private unbondings;
    mapping(address => bool) public isVerifier;
    /// The registered orchestrators (each with bonded stake, at most `maxActive`), in
    /// registration order except where a removal moved the last one into the freed slot.
    address[] private registeredList;
    /// Where each registered orchestrator is in `registeredList`.
    mapping(address => uint256) private registeredIndex;
    mapping(bytes32 => Proposal) public proposals;
    mapping(bytes32 => mapping(address => bool)) public hasVoted;
    mapping(bytes32 => address[]) private voters;

    event Bonded(address indexed orchestrator, uint256 amount, uint256 bonded);
    event Unbonded(address indexed orchestrator, uint256 amount, uint256 bonded, uint256 withdrawableAt);
    event Withdrawn(address indexed orchestrator, uint256 amount);
    event Registered(address indexed orchestrator, uint256 pricePerUnit, uint256 pixelsPerUnit, string serviceUri);
    /// The orchestrator's bonded stake fell to zero (unbonded or slashed): it left the list
    /// the active set is drawn from.
    event Deregistered(address indexed orchestrator);
    event VerifierSet(address indexed verifier, bool allowed);
    event SlashProposed(
        bytes32 indexed id,
        address indexed orchestrator,
        address indexed verifier,
        bytes32 claimHash,
        bytes32 rendition,
        uint256 amount,
        uint256 deadline,
        bytes32 evidenceHash
    );
    event SlashVoted(bytes32 indexed id, address indexed verifier, uint256 votes);
    event Slashed(address indexed orchestrator, bytes32 indexed id, uint256 amount, uint256 bonded, bytes32 evidenceHash);

    constructor(
        IERC20 token_,
        uint256 unbondingPeriod_,
        uint256 maxActive_,
        uint256 slashQuorum_,
        uint256 slashWindow_
    ) {
        require(maxActive_ > 0 && maxActive_ <= 1000, "the active set holds 1 to 1000 orchestrators");
        require(slashQuorum_ >= 2 && slashQuorum_ <= 100, "a slash needs 2 to 100 verifier votes");
        require(slashWindow_ > 0, "the slash window must be positive");
        token = token_;
        owner = msg.sender;
        unbondingPeriod = unbondingPeriod_;
        maxActive = maxActive_;
        slashQuorum = slashQuorum_;
        slashWindow = slashWindow_;
    }

    function setVerifier(address verifier, bool allowed) external {
        require(msg.sender == owner, "only the owner sets verifiers");
        isVerifier[verifier] = allowed;
        emit VerifierSet(verifier, allowed);
    }

    /// Bond `amount` tokens (approved to this contract beforehand) to the caller's own stake.
    function bond(uint256 amount) external {
        require(amount > 0, "bond a positive amount");
        require(token.transferFrom(msg.sender, address(this), amount), "token transfer failed");
        Orchestrator storage o = orchestrators[msg.sender];
        o.bonded += amount;
        emit Bonded(msg.sender, amount, o.bonded);
    }

    /// Start unbonding: the stake stops counting at once and can be withdrawn after the period;
    /// until it is withdrawn it can still be slashed. Stake already unbonding joins it and
    /// waits the new period too. Unbonding all of it deregisters.
    function unbond(uint256 amount) external {
        Orchestrator storage o = orchestrators[msg.sender];
        require(amount > 0 && amount <= o.bonded, "unbond between 1 and the bonded stake");
        o.bonded -= amount;
        Unbonding storage lock = unbondings[msg.sender];
        lock.amount += amount;
        lock.withdrawableAt = block.timestamp + unbondingPeriod;
        emit Unbonded(msg.sender, amount, o.bonded, lock.withdrawableAt);
        if (o.bonded == 0) {
            deregister(msg.sender);
        }
    }

    /// Withdraw the unbonding stake once its period has passed.
    function withdrawUnbonded() external returns (uint256 total) {
        Unbonding storage lock = unbondings[msg.sender];
        require(lock.amount > 0 && lock.withdrawableAt <= block.timestamp, "nothing is withdrawable yet");
        total = lock.amount;
        lock.amount = 0;
        require(token.transfer(msg.sender, total), "token transfer failed");
        emit Withdrawn(msg.sender, total);
    }

    /// Register (or update) the caller's price and service URI; it needs bonded stake, and
    /// when the active set is full, more than its smallest member's, which it replaces.
    function register(uint256 pricePerUnit, uint256 pixelsPerUnit, string calldata serviceUri) external {
        require(pixelsPerUnit > 0, "pixels per unit must be positive");
        Orchestrator storage o = orchestrators[msg.sender];
        require(o.bonded > 0, "bond stake before registering");
        if (!o.registered) {
            if (registeredList.length >= maxActive) {
                address smallest = registeredList[0];
                for (uint256 i = 1; i < registeredList.length; i++) {
                    if (orchestrators[registeredList[i]].bonded < orchestrators[smallest].bonded) {
                        smallest = registeredList[i];
                    }
                }
                require(
                    o.bonded > orchestrators[smallest].bonded,
                    "the active set is full: bond more than its smallest stake to join"
                );
                deregister(smallest);
            }
            o.registered = true;
            o.registeredAt = block.timestamp;
            registeredIndex[msg.sender] = registeredList.length;
            registeredList.push(msg.sender);
        }
        o.pricePerUnit = pricePerUnit;
        o.pixelsPerUnit = pixelsPerUnit;
        o.serviceUri = serviceUri;
        emit Registered(msg.sender, pricePerUnit, pixelsPerUnit, serviceUri);
    }

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    /// The EIP-712 digest an orchestrator signs for a claim.
    function claimHash(Claim calldata c) public view returns (bytes32) {
        bytes32 structHash = keccak256(abi.encode(CLAIM_TYPEHASH, c.orchestrator, c.stream, c.seq, c.renditions, c.fee));
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }

    /// The signer of `digest`, or the zero address for a malformed or high-s signature.
    function recoverSigner(bytes32 digest, bytes calldata sig) public pure returns (address) {
        return Signatures.recover(digest, sig);
    }

    /// Propose to slash `amount` of the claim's orchestrator for rendition `bad` of its
    /// claim `c` (signed `sig`; `renditions` are the hashes the claim covers, in its order),
    /// citing off-chain evidence by its hash; counts as the caller's vote. Returns the
    /// proposal's id, which other verifiers vote for.
    function proposeSlash(
        Claim calldata c,
        bytes calldata sig,
        bytes32[] calldata renditions,
        uint256 bad,
        uint256 amount,
        bytes32 evidenceHash
    ) external returns (bytes32 id) {
        require(isVerifier[msg.sender], "only a verifier slashes");
        bytes32 digest = claimHash(c);
        address signer = recoverSigner(digest, sig);
        require(signer != address(0) && signer == c.orchestrator, "the claim is not signed by its orchestrator");
        require(keccak256(abi.encodePacked(renditions)) == c.renditions, "the renditions are not the claim's");
        require(bad < renditions.length, "the claim has no such rendition");
        require(amount > 0, "slash a positive amount");
        id = keccak256(abi.encode(digest, renditions[bad]));
        Proposal storage p = proposals[id];
        require(p.deadline == 0, "this rendition is already proposed for a slash");
        p.orchestrator = c.orchestrator;
        p.amount = amount;
        p.deadline = block.timestamp + slashWindow;
        p.evidenceHash = evidenceHash;
        emit SlashProposed(id, c.orchestrator, msg.sender, digest, renditions[bad], amount, p.deadline, evidenceHash);
        vote(id);
    }

    /// Vote for slash proposal `id`; the vote that reaches the quorum slashes.
    function voteSlash(bytes32 id) external {
        require(isVerifier[msg.sender], "only a verifier slashes");
        vote(id);
    }

    function vote(bytes32 id) private {
        Proposal storage p = proposals[id];
        require(p.deadline != 0, "no such slash proposal");
        require(!p.executed, "this proposal has already slashed");
        require(block.timestamp <= p.deadline, "the proposal's voting window has closed");
        require(!hasVoted[id][msg.sender], "this verifier has already voted");
        hasVoted[id][msg.sender] = true;
        voters[id].push(msg.sender);
        p.votes += 1;
        emit SlashVoted(id, msg.sender, p.votes);
        if (p.votes >= slashQuorum) {
            p.executed = true;
            slash(id, p);
        }
    }

    /// Take up to the proposal's amount of its orchestrator's stake: its bonded stake first,
    /// then its unbonding stake not yet withdrawn, so that unbonding does not escape a
    /// fault found before the stake is withdrawn. Half goes to the verifiers that voted, in
    /// equal parts, the rest is burned. A slash to zero bonded stake deregisters.
    function slash(bytes32 id, Proposal storage p) private {
        address orchestrator = p.orchestrator;
        uint256 amount = p.amount;
        Orchestrator storage o = orchestrators[orchestrator];
        uint256 taken = amount < o.bonded ? amount : o.bonded;
        o.bonded -= taken;
        Unbonding storage lock = unbondings[orchestrator];
        uint256 part = amount - taken < lock.amount ? amount - taken : lock.amount;
        lock.amount -= part;
        taken += part;
        require(taken > 0, "nothing to slash");
        if (o.bonded == 0) {
            deregister(orchestrator);
        }
        address[] storage v = voters[id];
        uint256 each = taken / 2 / v.length;
        for (uint256 i = 0; i < v.length; i++) {
            if (each > 0) {
                require(token.transfer(v[i], each), "token transfer failed");
            }
        }
        token.burn(taken - each * v.length);
        emit Slashed(orchestrator, id, taken, o.bonded, p.evidenceHash);
    }

    /// Remove `orchestrator` from `registeredList` (swap with the last, pop) if it is there.
    function deregister(address orchestrator) private {
        Orchestrator storage o = orchestrators[orchestrator];
        if (!o.registered) {
            return;
        }
        o.registered = false;
        uint256 i = registeredIndex[orchestrator];
        address last = registeredList[registeredList.length - 1];
        registeredList[i] = last;
        registeredIndex[last] = i;
        registeredList.pop();
        delete registeredIndex[orchestrator];
        emit Deregistered(orchestrator);
    }

    function getOrchestrator(address orchestrator)
        external
        view
        returns (uint256 bonded, uint256 pricePerUnit, uint256 pixelsPerUnit, string memory serviceUri, bool registered)
    {
        Orchestrator storage o = orchestrators[orchestrator];
        return (o.bonded, o.pricePerUnit, o.pixelsPerUnit, o.serviceUri, o.registered);
    }

    function pendingUnbonding(address orchestrator) external view returns (uint256 amount, uint256 withdrawable) {
        Unbonding storage lock = unbondings[orchestrator];
        amount = lock.amount;
        if (lock.withdrawableAt <= block.timestamp) {
            withdrawable = lock.amount;
        }
    }

    /// The active set: the registered orchestrators (at most `maxActive`, each with bonded
    /// stake), highest stake first; ties keep the order of `registeredList`.
    function activeSet() public view returns (address[] memory) {
        uint256 n = registeredList.length;
        address[] memory sorted = new address[](n);
        for (uint256 i = 0; i < n; i++) {
            address a = registeredList[i];
            uint256 stake = orchestrators[a].bonded;
            uint256 j = i;
            while (j > 0 && orchestrators[sorted[j - 1]].bonded < stake) {
                sorted[j] = sorted[j - 1];
                j--;
            }
            sorted[j] = a;
        }
        return sorted;
    }

    /// Since when `orchestrator` has been in the active set without a break (a unix time), or
    /// 0 when it is not in it.
    function activeSince(address orchestrator) external view returns (uint256) {
        Orchestrator storage o = orchestrators[orchestrator];
        return o.registered ? o.registeredAt : 0;
    }

    /// Whether `orchestrator` is in the active set: registered (hence with bonded stake).
    function isActive(address orchestrator) external view returns (bool) {
        return orchestrators[orchestrator].registered;
    }
}
