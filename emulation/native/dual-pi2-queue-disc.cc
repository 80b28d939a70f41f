/*
 * DualQ Coupled AQM (DualPI2), RFC 9332, following Linux sch_dualpi2.
 */
#include "dual-pi2-queue-disc.h"

#include "ns3/abort.h"
#include "ns3/boolean.h"
#include "ns3/double.h"
#include "ns3/drop-tail-queue.h"
#include "ns3/enum.h"
#include "ns3/log.h"
#include "ns3/simulator.h"
#include "ns3/uinteger.h"

#include <algorithm>

namespace ns3
{

NS_LOG_COMPONENT_DEFINE("DualPi2QueueDisc");
NS_OBJECT_ENSURE_REGISTERED(DualPi2QueueDisc);

TypeId
DualPi2QueueDisc::GetTypeId()
{
    static TypeId tid =
        TypeId("ns3::DualPi2QueueDisc")
            .SetParent<QueueDisc>()
            .SetGroupName("TrafficControl")
            .AddConstructor<DualPi2QueueDisc>()
            .AddAttribute("QueueLimit",
                          "Shared limit of both queues, in packets (Linux 'limit').",
                          UintegerValue(10000),
                          MakeUintegerAccessor(&DualPi2QueueDisc::m_limit),
                          MakeUintegerChecker<uint32_t>(1))
            .AddAttribute("Target",
                          "Classic queue delay target of the PI2 controller.",
                          TimeValue(MilliSeconds(15)),
                          MakeTimeAccessor(&DualPi2QueueDisc::m_target),
                          MakeTimeChecker(MicroSeconds(1)))
            .AddAttribute("Tupdate",
                          "Interval between PI2 updates of p'.",
                          TimeValue(MilliSeconds(16)),
                          MakeTimeAccessor(&DualPi2QueueDisc::m_tUpdate),
                          MakeTimeChecker(MicroSeconds(100)))
            .AddAttribute("Alpha",
                          "Integral gain of the PI2 controller, in Hz (p' change per second of delay error).",
                          DoubleValue(0.16),
                          MakeDoubleAccessor(&DualPi2QueueDisc::m_alpha),
                          MakeDoubleChecker<double>(0.0, 100.0))
            .AddAttribute("Beta",
                          "Proportional gain of the PI2 controller, in Hz.",
                          DoubleValue(3.2),
                          MakeDoubleAccessor(&DualPi2QueueDisc::m_beta),
                          MakeDoubleChecker<double>(0.0, 100.0))
            .AddAttribute("CouplingFactor",
                          "Coupling factor k: p_CL = k p' (dimensionless).",
                          DoubleValue(2.0),
                          MakeDoubleAccessor(&DualPi2QueueDisc::m_k),
                          MakeDoubleChecker<double>(0.1, 100.0))
            .AddAttribute("LAqm",
                          "Native AQM of the L queue: Step (Linux) or Ramp (RFC 9332 example).",
                          EnumValue(L_AQM_STEP),
                          MakeEnumAccessor<LAqmMode>(&DualPi2QueueDisc::m_lAqm),
                          MakeEnumChecker(L_AQM_STEP, "Step", L_AQM_RAMP, "Ramp"))
            .AddAttribute("StepThreshold",
                          "Sojourn above which the step AQM marks every L packet.",
                          TimeValue(MilliSeconds(1)),
                          MakeTimeAccessor(&DualPi2QueueDisc::m_stepThreshold),
                          MakeTimeChecker(Time(0)))
            .AddAttribute("MinQlenStep",
                          "The step AQM acts only when the L queue holds more than this many packets.",
                          UintegerValue(0),
                          MakeUintegerAccessor(&DualPi2QueueDisc::m_minQlenStep),
                          MakeUintegerChecker<uint32_t>())
            .AddAttribute("RampMin",
                          "Sojourn at which the ramp AQM starts marking.",
                          TimeValue(MicroSeconds(800)),
                          MakeTimeAccessor(&DualPi2QueueDisc::m_rampMin),
                          MakeTimeChecker(Time(0)))
            .AddAttribute("RampRange",
                          "Width of the ramp: marking probability reaches 1 at RampMin + RampRange.",
                          TimeValue(MicroSeconds(400)),
                          MakeTimeAccessor(&DualPi2QueueDisc::m_rampRange),
                          MakeTimeChecker(NanoSeconds(1)))
            .AddAttribute("DropOnOverload",
                          "When k p' > 1, drop L packets with p'^2 instead of marking (Linux drop_on_overload).",
                          BooleanValue(true),
                          MakeBooleanAccessor(&DualPi2QueueDisc::m_dropOnOverload),
                          MakeBooleanChecker())
            .AddAttribute("DropEarly",
                          "Apply the coupled/classic AQM at enqueue instead of dequeue (Linux drop_early).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&DualPi2QueueDisc::m_dropEarly),
                          MakeBooleanChecker())
            .AddAttribute("ClassicProtection",
                          "Share of the scheduler's credit given to the classic queue, in percent (WRR).",
                          UintegerValue(10),
                          MakeUintegerAccessor(&DualPi2QueueDisc::m_classicProtectionPercent),
                          MakeUintegerChecker<uint32_t>(0, 100))
            .AddAttribute("Mtu",
                          "MTU in bytes: no AQM while the backlog is below 2 MTU; WRR credit unit.",
                          UintegerValue(1500),
                          MakeUintegerAccessor(&DualPi2QueueDisc::m_mtu),
                          MakeUintegerChecker<uint32_t>(68, 65535))
            .AddAttribute("AnyEct",
                          "Classify every ECT packet (ECT(0) too) into the L queue (Linux any_ect).",
                          BooleanValue(false),
                          MakeBooleanAccessor(&DualPi2QueueDisc::m_anyEct),
                          MakeBooleanChecker())
            .AddAttribute("ExternalControl",
                          "p' is owned by an external controller: the PI2 update is off and the "
                          "update hook runs every Tupdate instead.",
                          BooleanValue(false),
                          MakeBooleanAccessor(&DualPi2QueueDisc::m_externalControl),
                          MakeBooleanChecker())
            .AddTraceSource("ProbBase",
                            "Base probability p'",
                            MakeTraceSourceAccessor(&DualPi2QueueDisc::m_pPrime),
                            "ns3::TracedValueCallback::Double")
            .AddTraceSource("ProbCL",
                            "Coupled L marking probability k p'",
                            MakeTraceSourceAccessor(&DualPi2QueueDisc::m_pCL),
                            "ns3::TracedValueCallback::Double")
            .AddTraceSource("ProbC",
                            "Classic drop/mark probability p'^2",
                            MakeTraceSourceAccessor(&DualPi2QueueDisc::m_pC),
                            "ns3::TracedValueCallback::Double")
            .AddTraceSource("SojournL",
                            "Sojourn time of each L packet leaving the queue disc",
                            MakeTraceSourceAccessor(&DualPi2QueueDisc::m_traceSojournL),
                            "ns3::Time::TracedCallback")
            .AddTraceSource("SojournC",
                            "Sojourn time of each classic packet leaving the queue disc",
                            MakeTraceSourceAccessor(&DualPi2QueueDisc::m_traceSojournC),
                            "ns3::Time::TracedCallback");
    return tid;
}

DualPi2QueueDisc::DualPi2QueueDisc()
    : QueueDisc(QueueDiscSizePolicy::NO_LIMITS),
      m_pPrime(0.0),
      m_pCL(0.0),
      m_pC(0.0),
      m_qdelayPrev(Time(0)),
      m_cProtectionCredit(0),
      m_cProtectionInit(0)
{
    NS_LOG_FUNCTION(this);
    m_uv = CreateObject<UniformRandomVariable>();
}

DualPi2QueueDisc::~DualPi2QueueDisc()
{
    NS_LOG_FUNCTION(this);
}

void
DualPi2QueueDisc::DoDispose()
{
    NS_LOG_FUNCTION(this);
    m_uv = nullptr;
    m_externalHook = nullptr;
    Simulator::Cancel(m_updateEvent);
    QueueDisc::DoDispose();
}

int64_t
DualPi2QueueDisc::AssignStreams(int64_t stream)
{
    m_uv->SetStream(stream);
    return 1;
}

bool
DualPi2QueueDisc::IsL4s(Ptr<const QueueDiscItem> item) const
{
    uint8_t tos = 0;
    if (!item->GetUint8Value(QueueItem::IP_DSFIELD, tos))
    {
        return false;
    }
    uint8_t ecn = tos & 0x3;
    // 0b01 = ECT(1), 0b11 = CE, 0b10 = ECT(0)
    if (ecn == 0x1 || ecn == 0x3)
    {
        return true;
    }
    return m_anyEct && ecn == 0x2;
}

Time
DualPi2QueueDisc::GetQueueSojourn(std::size_t queue) const
{
    Ptr<const QueueDiscItem> head = GetInternalQueue(queue)->Peek();
    if (!head)
    {
        return Time(0);
    }
    return Simulator::Now() - head->GetTimeStamp();
}

Time
DualPi2QueueDisc::GetQueueDelay() const
{
    return std::max(GetQueueSojourn(CLASSIC), GetQueueSojourn(L4S));
}

uint32_t
DualPi2QueueDisc::GetQueueLength(std::size_t queue) const
{
    return GetInternalQueue(queue)->GetNPackets();
}

uint32_t
DualPi2QueueDisc::GetQueueBytes(std::size_t queue) const
{
    return GetInternalQueue(queue)->GetNBytes();
}

double
DualPi2QueueDisc::GetBaseProbability() const
{
    return m_pPrime.Get();
}

double
DualPi2QueueDisc::GetCoupledProbability() const
{
    return m_pCL.Get();
}

double
DualPi2QueueDisc::GetClassicProbability() const
{
    return m_pC.Get();
}

bool
DualPi2QueueDisc::SetBaseProbability(double pPrime)
{
    if (!(pPrime >= 0.0 && pPrime <= 1.0))
    {
        NS_LOG_WARN("rejected p' outside [0, 1]: " << pPrime);
        return false;
    }
    m_pPrime = pPrime;
    UpdateProbabilityTraces();
    return true;
}

void
DualPi2QueueDisc::SetExternalUpdateHook(std::function<void()> hook)
{
    m_externalHook = std::move(hook);
}

const DualPi2QueueDisc::Counters&
DualPi2QueueDisc::GetCounters() const
{
    return m_counters;
}

void
DualPi2QueueDisc::UpdateProbabilityTraces()
{
    double pPrime = m_pPrime.Get();
    m_pCL = std::min(m_k * pPrime, 1.0);
    m_pC = pPrime * pPrime;
}

bool
DualPi2QueueDisc::Roll(double probability)
{
    return probability > m_uv->GetValue();
}

void
DualPi2QueueDisc::Update()
{
    NS_LOG_FUNCTION(this);
    if (m_externalControl)
    {
        if (m_externalHook)
        {
            m_externalHook();
        }
    }
    else
    {
        // PI2 (RFC 9332 sec. A.1, Linux calculate_probability), in seconds and Hz.
        // The external PI2 agent computes exactly this expression for parity.
        double qdelay = GetQueueDelay().GetSeconds();
        double delta = m_alpha * (qdelay - m_target.GetSeconds()) + m_beta * (qdelay - m_qdelayPrev.GetSeconds());
        double p = m_pPrime.Get() + delta;
        p = std::min(std::max(p, 0.0), 1.0);
        if (!m_dropOnOverload)
        {
            p = std::min(p, 1.0 / m_k);
        }
        m_qdelayPrev = Seconds(qdelay);
        m_pPrime = p;
        UpdateProbabilityTraces();
    }
    m_updateEvent = Simulator::Schedule(m_tUpdate, &DualPi2QueueDisc::Update, this);
}

bool
DualPi2QueueDisc::DoEnqueue(Ptr<QueueDiscItem> item)
{
    NS_LOG_FUNCTION(this << item);
    if (GetInternalQueue(CLASSIC)->GetNPackets() + GetInternalQueue(L4S)->GetNPackets() >= m_limit)
    {
        m_counters.tailDrops++;
        DropBeforeEnqueue(item, FORCED_DROP);
        return false;
    }
    bool isL = IsL4s(item);
    if (m_dropEarly && MustDrop(item, isL))
    {
        return false;
    }
    uint32_t size = item->GetSize();
    bool ok = GetInternalQueue(isL ? L4S : CLASSIC)->Enqueue(item);
    if (ok)
    {
        if (isL)
        {
            m_counters.lEnqueuedPackets++;
            m_counters.lEnqueuedBytes += size;
        }
        else
        {
            m_counters.cEnqueuedPackets++;
            m_counters.cEnqueuedBytes += size;
        }
    }
    return ok;
}

Ptr<QueueDiscItem>
DualPi2QueueDisc::DequeuePacket(bool& fromL)
{
    // Linux dequeue_packet(): L is served while the credit is not positive;
    // each L packet sent while C waits adds wc x len, each C packet sent while
    // L waits removes wl x len, so C gets about wc% of the link under load.
    uint32_t lLen = GetInternalQueue(L4S)->GetNPackets();
    uint32_t cLen = GetInternalQueue(CLASSIC)->GetNPackets();
    int64_t wc = m_classicProtectionPercent;
    int64_t wl = 100 - m_classicProtectionPercent;
    Ptr<QueueDiscItem> item;
    if (lLen > 0 && (cLen == 0 || m_cProtectionCredit <= 0))
    {
        item = GetInternalQueue(L4S)->Dequeue();
        fromL = true;
        if (cLen > 0)
        {
            m_cProtectionCredit += wc * item->GetSize();
        }
    }
    else if (cLen > 0)
    {
        item = GetInternalQueue(CLASSIC)->Dequeue();
        fromL = false;
        if (lLen > 0)
        {
            m_cProtectionCredit -= wl * item->GetSize();
        }
    }
    else
    {
        m_cProtectionCredit = m_cProtectionInit;
    }
    return item;
}

bool
DualPi2QueueDisc::MustDrop(Ptr<QueueDiscItem> item, bool fromL)
{
    // No AQM while the backlog is below 2 MTU (Linux must_drop()).
    if (GetNBytes() < 2 * m_mtu)
    {
        return false;
    }
    double pPrime = m_pPrime.Get();
    double pCL = m_k * pPrime;
    bool overload = pCL > 1.0;
    if (!fromL)
    {
        if (Roll(pPrime) && Roll(pPrime))
        {
            if (overload || !Mark(item, UNFORCED_CLASSIC_MARK))
            {
                if (overload)
                {
                    m_counters.overloadDrops++;
                }
                m_counters.classicDrops++;
                m_dropEarly ? DropBeforeEnqueue(item, overload ? OVERLOAD_DROP : UNFORCED_CLASSIC_DROP)
                            : DropAfterDequeue(item, overload ? OVERLOAD_DROP : UNFORCED_CLASSIC_DROP);
                return true;
            }
            m_counters.classicMarks++;
        }
        return false;
    }
    if (overload)
    {
        if (m_dropOnOverload && Roll(pPrime) && Roll(pPrime))
        {
            m_counters.overloadDrops++;
            m_counters.lDrops++;
            m_dropEarly ? DropBeforeEnqueue(item, OVERLOAD_DROP) : DropAfterDequeue(item, OVERLOAD_DROP);
            return true;
        }
        // Without drop on overload L packets are marked at p_CL capped to 1.
        if (!m_dropOnOverload && Mark(item, UNFORCED_L4S_MARK))
        {
            m_counters.coupledMarks++;
        }
        return false;
    }
    if (m_lAqm == L_AQM_STEP && Roll(pCL) && Mark(item, UNFORCED_L4S_MARK))
    {
        m_counters.coupledMarks++;
    }
    return false;
}

bool
DualPi2QueueDisc::StepAqm(Ptr<QueueDiscItem> item, Time sojourn)
{
    uint32_t lLen = GetInternalQueue(L4S)->GetNPackets() + 1; // the dequeued packet counts
    if (m_lAqm == L_AQM_STEP)
    {
        if (lLen > m_minQlenStep && sojourn > m_stepThreshold)
        {
            if (Mark(item, STEP_MARK))
            {
                m_counters.stepMarks++;
                return false;
            }
            m_counters.lDrops++;
            DropAfterDequeue(item, STEP_DROP);
            return true;
        }
        return false;
    }
    // Ramp: p_L = max(p_native, p_CL), only when more than one packet is queued.
    if (GetNBytes() + item->GetSize() < 2 * m_mtu || m_k * m_pPrime.Get() > 1.0)
    {
        return false;
    }
    double native = 0.0;
    if (lLen > 1)
    {
        native = (sojourn - m_rampMin).GetSeconds() / m_rampRange.GetSeconds();
        native = std::min(std::max(native, 0.0), 1.0);
    }
    double pCL = m_k * m_pPrime.Get();
    if (Roll(std::max(native, pCL)))
    {
        const char* reason = native >= pCL ? STEP_MARK : UNFORCED_L4S_MARK;
        if (Mark(item, reason))
        {
            native >= pCL ? m_counters.stepMarks++ : m_counters.coupledMarks++;
            return false;
        }
        m_counters.lDrops++;
        DropAfterDequeue(item, STEP_DROP);
        return true;
    }
    return false;
}

Ptr<QueueDiscItem>
DualPi2QueueDisc::DoDequeue()
{
    NS_LOG_FUNCTION(this);
    while (true)
    {
        bool fromL = false;
        Ptr<QueueDiscItem> item = DequeuePacket(fromL);
        if (!item)
        {
            return nullptr;
        }
        Time sojourn = Simulator::Now() - item->GetTimeStamp();
        if (!m_dropEarly && MustDrop(item, fromL))
        {
            continue;
        }
        if (fromL && StepAqm(item, sojourn))
        {
            continue;
        }
        if (fromL)
        {
            m_counters.lDequeuedBytes += item->GetSize();
            m_traceSojournL(sojourn);
        }
        else
        {
            m_counters.cDequeuedBytes += item->GetSize();
            m_traceSojournC(sojourn);
        }
        return item;
    }
}

bool
DualPi2QueueDisc::CheckConfig()
{
    NS_LOG_FUNCTION(this);
    if (GetNQueueDiscClasses() > 0)
    {
        NS_LOG_ERROR("DualPi2QueueDisc cannot have classes");
        return false;
    }
    if (GetNPacketFilters() > 0)
    {
        NS_LOG_ERROR("DualPi2QueueDisc classifies by ECN itself and takes no packet filters");
        return false;
    }
    if (GetNInternalQueues() == 0)
    {
        // Each internal queue could hold the whole shared limit; the limit is enforced in DoEnqueue.
        for (int i = 0; i < 2; i++)
        {
            AddInternalQueue(CreateObjectWithAttributes<DropTailQueue<QueueDiscItem>>(
                "MaxSize",
                QueueSizeValue(QueueSize(QueueSizeUnit::PACKETS, m_limit))));
        }
    }
    if (GetNInternalQueues() != 2)
    {
        NS_LOG_ERROR("DualPi2QueueDisc needs exactly two internal queues");
        return false;
    }
    return true;
}

void
DualPi2QueueDisc::InitializeParams()
{
    NS_LOG_FUNCTION(this);
    m_cProtectionInit = static_cast<int64_t>(m_mtu) *
                        (static_cast<int64_t>(m_classicProtectionPercent) - (100 - m_classicProtectionPercent));
    m_cProtectionCredit = m_cProtectionInit;
    m_qdelayPrev = Time(0);
    UpdateProbabilityTraces();
    m_updateEvent = Simulator::Schedule(m_tUpdate, &DualPi2QueueDisc::Update, this);
}

} // namespace ns3
